"""DVC stage ``import_encoder``.

Its config class and ``run`` are in ``pipeline/encoders/import_encoder.py``.
"""

import sys

from pipeline.cli import run_stage
from pipeline.encoders import import_encoder


def main(argv: list[str] | None = None) -> int:
    return run_stage(import_encoder, argv)


if __name__ == "__main__":
    sys.exit(main())
