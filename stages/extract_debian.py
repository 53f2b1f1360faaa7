"""DVC stage ``extract_debian``.

Its config class and ``run`` are in ``pipeline/sources/extract_debian.py``.
"""

import sys

from pipeline.cli import run_stage
from pipeline.sources import extract_debian


def main(argv: list[str] | None = None) -> int:
    return run_stage(extract_debian, argv)


if __name__ == "__main__":
    sys.exit(main())
