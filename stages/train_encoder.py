"""DVC stage ``train_encoder``.

Its config class and ``run`` are in ``pipeline/train/train_encoder.py``.
"""

import sys

from pipeline.cli import run_stage
from pipeline.train import train_encoder


def main(argv: list[str] | None = None) -> int:
    return run_stage(train_encoder, argv)


if __name__ == "__main__":
    sys.exit(main())
