"""DVC stage `train_nmt` (see `multiway train_nmt --help`)."""

import sys

from pipeline.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("train_nmt", argv)


if __name__ == "__main__":
    sys.exit(main())
