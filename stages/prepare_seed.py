"""DVC stage `prepare_seed` (see `multiway prepare_seed --help`)."""

import sys

from pipeline.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("prepare_seed", argv)


if __name__ == "__main__":
    sys.exit(main())
