"""DVC stage `train_encoder` (see `multiway train_encoder --help`)."""

import sys

from pipeline.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("train_encoder", argv)


if __name__ == "__main__":
    sys.exit(main())
