"""DVC stage ``prepare_seed``.

Its config class and ``run`` are in ``pipeline/sources/prepare_seed.py``.
"""

import sys

from pipeline.cli import run_stage
from pipeline.sources import prepare_seed


def main(argv: list[str] | None = None) -> int:
    return run_stage(prepare_seed, argv)


if __name__ == "__main__":
    sys.exit(main())
