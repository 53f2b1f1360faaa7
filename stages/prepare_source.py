"""DVC stage ``prepare_source``.

Its config class and ``run`` are in ``pipeline/sources/prepare_source.py``.
"""

import sys

from pipeline.cli import run_stage
from pipeline.sources import prepare_source


def main(argv: list[str] | None = None) -> int:
    return run_stage(prepare_source, argv)


if __name__ == "__main__":
    sys.exit(main())
