"""DVC stage `train_drmim` (see `multiway train_drmim --help`)."""

import sys

from pipeline.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("train_drmim", argv)


if __name__ == "__main__":
    sys.exit(main())
