"""DVC stage ``translate``.

Its config class and ``run`` are in ``pipeline/translate/translate.py``.
"""

import sys

from pipeline.cli import run_stage
from pipeline.translate import translate


def main(argv: list[str] | None = None) -> int:
    return run_stage(translate, argv)


if __name__ == "__main__":
    sys.exit(main())
