"""DVC stage ``convert_nmt``.

Its config class and ``run`` are in ``pipeline/translate/convert_nmt.py``.
"""

import sys

from pipeline.cli import run_stage
from pipeline.translate import convert_nmt


def main(argv: list[str] | None = None) -> int:
    return run_stage(convert_nmt, argv)


if __name__ == "__main__":
    sys.exit(main())
