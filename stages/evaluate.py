"""DVC stage ``evaluate``.

Its config class and ``run`` are in ``pipeline/evaluation/evaluate.py``.
"""

import sys

from pipeline.cli import run_stage
from pipeline.evaluation import evaluate


def main(argv: list[str] | None = None) -> int:
    return run_stage(evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
