"""DVC stage ``train_drmim``.

Its config class and ``run`` are in ``pipeline/downstream/train_drmim.py``.
"""

import sys

from pipeline.cli import run_stage
from pipeline.downstream import train_drmim


def main(argv: list[str] | None = None) -> int:
    return run_stage(train_drmim, argv)


if __name__ == "__main__":
    sys.exit(main())
