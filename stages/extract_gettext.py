"""DVC stage ``extract_gettext``.

Its config class and ``run`` are in ``pipeline/sources/extract_gettext.py``.
"""

import sys

from pipeline.cli import run_stage
from pipeline.sources import extract_gettext


def main(argv: list[str] | None = None) -> int:
    return run_stage(extract_gettext, argv)


if __name__ == "__main__":
    sys.exit(main())
