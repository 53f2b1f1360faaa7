"""DVC stage ``evaluate_downstream``.

Its config class and ``run`` are in ``pipeline/downstream/evaluate_downstream.py``.
"""

import sys

from pipeline.cli import run_stage
from pipeline.downstream import evaluate_downstream


def main(argv: list[str] | None = None) -> int:
    return run_stage(evaluate_downstream, argv)


if __name__ == "__main__":
    sys.exit(main())
