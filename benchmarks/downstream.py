"""The offline downstream comparison, timed: ``train_drmim`` + ``evaluate_downstream`` items.

Runs the two stage functions for every task × encoder of ``params.yaml``'s ``train_drmim``
section (all variants and seeds, as ``dvc repro`` does), writing into a scratch directory,
and reports the wall and CPU time of each item and of the whole comparison, which should
stay within about 15 minutes on 2 CPU cores. CPU time (``time.process_time``) is reported
next to wall time because on a shared machine wall time also measures the other processes.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/downstream.py [--params params.yaml]

The summary goes to ``benchmarks/results/downstream.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import time
from pathlib import Path

from pipeline.config import LangsConfig, load_section
from pipeline.downstream import evaluate_downstream, train_drmim
from pipeline.downstream.evaluate_downstream import EvaluateDownstreamConfig
from pipeline.downstream.train_drmim import TrainDrmimConfig
from pipeline.runtime import setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/work/downstream_benchmark")
    args = parser.parse_args()
    setup_logging(logging.INFO)
    langs = load_section(args.params, "langs", LangsConfig)
    out = Path(args.out)
    train_cfg = dataclasses.replace(load_section(args.params, "train_drmim", TrainDrmimConfig),
                                    output_dir=str(out / "runs"), work_dir=str(out / "work"),
                                    plots_dir=str(out / "plots"))
    eval_cfg = dataclasses.replace(
        load_section(args.params, "evaluate_downstream", EvaluateDownstreamConfig),
        runs_dir=train_cfg.output_dir, output_dir=str(out / "scores"))
    items = []
    start, cpu = time.perf_counter(), time.process_time()
    for task in train_cfg.tasks:
        for encoder in train_cfg.encoders:
            t0, c0 = time.perf_counter(), time.process_time()
            trained = train_drmim.run(train_cfg, langs, task, encoder)
            t1, c1 = time.perf_counter(), time.process_time()
            scored = evaluate_downstream.run(eval_cfg, langs, task, encoder)
            items.append({
                "task": task, "encoder": encoder, "runs": trained["runs"],
                "features/sequences": trained["runtime"]["features/sequences"],
                "train": {"wall": round(t1 - t0, 1), "cpu": round(c1 - c0, 1),
                          "features_wall": trained["runtime"]["seconds/features"]},
                "evaluate": {"wall": round(time.perf_counter() - t1, 1),
                             "cpu": round(time.process_time() - c1, 1)},
                "train_seconds": {k.split("/", 1)[1]: v for k, v in trained["runtime"].items()
                                  if k.startswith("train_seconds/")},
                "zero_shot": {k.split("/")[0]: v for k, v in scored.items()
                              if k.endswith("/zero_shot")},
            })
    total = {"wall": round(time.perf_counter() - start, 1),
             "cpu": round(time.process_time() - cpu, 1)}
    print("\n| task | encoder | runs | sequences | features (wall) | train item (wall / CPU) "
          "| evaluate (wall) |")
    print("|---|---|---|---|---|---|---|")
    for it in items:
        print(f"| {it['task']} | {it['encoder']} | {it['runs']} | {it['features/sequences']:,} "
              f"| {it['train']['features_wall']:.0f} s | {it['train']['wall']:.0f} s / "
              f"{it['train']['cpu']:.0f} s | {it['evaluate']['wall']:.0f} s |")
    print(f"whole comparison: {total['wall']:.0f} s wall, {total['cpu']:.0f} s CPU")
    result = Path("benchmarks/results/downstream.json")
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": train_cfg.threads},
        "config": dataclasses.asdict(train_cfg), "seconds": total, "items": items,
    }, indent=2, default=list) + "\n")


if __name__ == "__main__":
    main()
