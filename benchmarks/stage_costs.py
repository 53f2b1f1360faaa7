"""What each stage of the last run cost: wall and CPU time, peak resident memory.

Every stage run through ``multiway`` (so every ``dvc repro`` stage) writes
``data/runtime/<stage>[@item].json``: wall and CPU seconds, the peak resident set size of the
stage's process (``peak_rss_mb``), the CPU model and the date. This prints them as one
Markdown table, stage by stage in pipeline order, with the sums, and flags every stage over
the memory budget (``--max-rss-mb``, 4,000 MB: the default run's target on a 2-core machine).

    .venv/bin/python benchmarks/stage_costs.py [--runtime-dir data/runtime]

Run it after ``make repro`` on a fresh clone; the table goes to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def stage_order() -> list[str]:
    """Stage names in dvc.yaml's order (matrix items follow their stage)."""
    return list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-dir", type=Path, default=ROOT / "data/runtime")
    parser.add_argument("--max-rss-mb", type=float, default=4000.0)
    args = parser.parse_args(argv)
    files = sorted(args.runtime_dir.glob("*.json"))
    if not files:
        raise SystemExit(f"no runtime files in {args.runtime_dir}; run the pipeline first")
    order = {name: i for i, name in enumerate(stage_order())}
    runs = [(f.stem, json.loads(f.read_text())) for f in files]
    runs.sort(key=lambda r: (order.get(r[0].split("@")[0], len(order)), r[0]))
    cpus = sorted({r["cpu_model"] for _, r in runs})
    dates = sorted(r["date"] for _, r in runs)
    print(f"CPU: {', '.join(cpus)}; {runs[0][1]['cpu_count']} cores; "
          f"runs from {dates[0]} to {dates[-1]}\n")
    print("| stage | wall (s) | CPU (s) | peak RSS (MB) |")
    print("|---|---:|---:|---:|")
    for name, r in runs:
        flag = " **over budget**" if r["peak_rss_mb"] > args.max_rss_mb else ""
        print(f"| {name} | {r['wall_seconds']:.0f} | {r['cpu_seconds']:.0f} | "
              f"{r['peak_rss_mb']:,.0f}{flag} |")
    wall = sum(r["wall_seconds"] for _, r in runs)
    cpu = sum(r["cpu_seconds"] for _, r in runs)
    peak = max(r["peak_rss_mb"] for _, r in runs)
    print(f"| **all {len(runs)} stages** | {wall:.0f} ({wall / 60:.1f} min) | {cpu:.0f} | "
          f"{peak:,.0f} (max) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
