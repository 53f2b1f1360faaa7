"""DVC stage ``report``.

Its config class and ``run`` are in ``pipeline/report/report.py``.
"""

import sys

from pipeline.cli import run_stage
from pipeline.report import report


def main(argv: list[str] | None = None) -> int:
    return run_stage(report, argv)


if __name__ == "__main__":
    sys.exit(main())
