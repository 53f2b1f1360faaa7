"""Choose the downstream hyperparameters on the English dev split, never on a test subset.

Runs ``train_drmim`` + ``evaluate_downstream`` (the stage functions) on one task and the
*base* encoder (so no aligned encoder is favoured), every seed of ``params.yaml``, with the
test languages cut to English (``languages: [eng_Latn]``: no other language is predicted),
and reads each variant's accuracy on the ``dev`` subset: English verses from chapters of
the training source that no training example comes from. Three rounds, each keeping the
best setting of the one before:

1. ``finetune``: the learning rate (the head's is ten times the encoder's). The epochs are
   the time budget's (``make repro`` within 45 minutes on 2 cores), not tuned;
2. ``drmim``: one scale for all its auxiliary loss weights (language, adversary,
   decorrelation, MI, tie);
3. ``epar``: the push radius ``epsilon``.

A setting must beat the current one by more than the seeds' standard error to replace it
(ties keep the current value). The table and the choice go to
``benchmarks/results/downstream_dev.json``; docs/downstream.md quotes the outcome.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/downstream_dev.py [--task bible_genre]

Needs the encoder (``dvc repro import_encoder``) and the corpus (``dvc repro build_corpus``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any

from pipeline.config import LangsConfig, load_section
from pipeline.downstream import evaluate_downstream, train_drmim
from pipeline.downstream.evaluate_downstream import EvaluateDownstreamConfig
from pipeline.downstream.train_drmim import TrainDrmimConfig
from pipeline.runtime import setup_logging

DRMIM_WEIGHTS = ("w_lang", "w_adv", "w_decorr", "w_mi", "w_tie")


def dev_score(cfg: TrainDrmimConfig, eval_cfg: EvaluateDownstreamConfig, langs: LangsConfig,
              task: str, encoder: str, variant: str, out: Path) -> dict[str, float]:
    """Mean and standard error over seeds of ``variant``'s dev accuracy under ``cfg``."""
    cfg = dataclasses.replace(cfg, methods=(variant,), languages=(langs.source,),
                              output_dir=str(out / "runs"), work_dir=str(out / "work"),
                              plots_dir=str(out / "plots"), figure_examples=0)
    train_drmim.run(cfg, langs, task, encoder)
    eval_cfg = dataclasses.replace(eval_cfg, runs_dir=cfg.output_dir,
                                   output_dir=str(out / "scores"))
    metrics = evaluate_downstream.run(eval_cfg, langs, task, encoder)
    mean, std = metrics[f"{variant}/accuracy/dev"], metrics[f"{variant}/accuracy/dev/std"]
    return {"dev": mean, "sem": std / math.sqrt(len(cfg.seeds))}


def pick(rows: list[dict[str, Any]], current: dict[str, Any]) -> dict[str, Any]:
    """The best row; the current setting's row when the best is within one standard error."""
    best = max(rows, key=lambda r: r["dev"])
    now = next(r for r in rows if r["setting"] == current)
    return now if best["dev"] - now["dev"] <= max(best["sem"], now["sem"]) else best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--task", default="bible_genre")
    parser.add_argument("--out", default="data/work/downstream_dev")
    args = parser.parse_args()
    setup_logging(logging.WARNING)
    langs = load_section(args.params, "langs", LangsConfig)
    cfg = load_section(args.params, "train_drmim", TrainDrmimConfig)
    eval_cfg = load_section(args.params, "evaluate_downstream", EvaluateDownstreamConfig)
    encoder = cfg.encoders[0]
    out = Path(args.out)
    start = time.perf_counter()
    rounds: dict[str, Any] = {}

    def run_round(name: str, variant: str, settings: list[dict[str, Any]],
                  current: dict[str, Any], apply: Any) -> dict[str, Any]:
        rows = []
        for i, setting in enumerate(settings):
            score = dev_score(apply(setting), eval_cfg, langs, args.task, encoder, variant,
                              out / name / str(i))
            rows.append({"setting": setting, **score})
            print(f"{name} {setting}: dev {score['dev']:.2f} ± {score['sem']:.2f}", flush=True)
        chosen = pick(rows, current)["setting"]
        rounds[name] = {"variant": variant, "rows": rows, "current": current, "chosen": chosen}
        return chosen

    lr = run_round("finetune", "finetune", [{"lr": lr} for lr in (3e-4, 1e-3, 3e-3)],
                   {"lr": cfg.lr},
                   lambda s: dataclasses.replace(cfg, lr=s["lr"], head_lr=10 * s["lr"]))
    cfg = dataclasses.replace(cfg, lr=lr["lr"], head_lr=10 * lr["lr"])

    def drmim_scaled(s: dict[str, Any]) -> TrainDrmimConfig:
        weights = {w: s["weight"] for w in DRMIM_WEIGHTS}
        return dataclasses.replace(cfg, drmim=dataclasses.replace(cfg.drmim, **weights))

    weight = run_round("drmim", "drmim", [{"weight": w} for w in (0.03, 0.1, 0.3)],
                       {"weight": cfg.drmim.w_tie}, drmim_scaled)
    cfg = drmim_scaled(weight)
    run_round("epar", "epar", [{"epsilon": e} for e in (0.1, 0.3, 1.0)],
              {"epsilon": cfg.epar.epsilon},
              lambda s: dataclasses.replace(cfg, epar=dataclasses.replace(
                  cfg.epar, epsilon=s["epsilon"])))

    print("\n| round | setting | English dev accuracy (mean ± s.e. over seeds) | chosen |")
    print("|---|---|---|---|")
    for name, r in rounds.items():
        for row in r["rows"]:
            mark = "✓" if row["setting"] == r["chosen"] else ""
            setting = ", ".join(f"{k} {v:g}" for k, v in row["setting"].items())
            print(f"| {name} | {setting} | {row['dev']:.2f} ± {row['sem']:.2f} | {mark} |")
    result = Path("benchmarks/results/downstream_dev.json")
    result.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "task": args.task, "encoder": encoder, "seeds": list(cfg.seeds), "epochs": cfg.epochs,
        "seconds": round(time.perf_counter() - start, 1), "rounds": rounds,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
