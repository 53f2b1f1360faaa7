"""DVC stage ``train_nmt``.

Its config class and ``run`` are in ``pipeline/translate/train_nmt.py``.
"""

import sys

from pipeline.cli import run_stage
from pipeline.translate import train_nmt


def main(argv: list[str] | None = None) -> int:
    return run_stage(train_nmt, argv)


if __name__ == "__main__":
    sys.exit(main())
