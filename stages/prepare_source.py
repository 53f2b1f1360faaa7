"""DVC stage `prepare_source` (see `multiway prepare_source --help`)."""

import sys

from pipeline.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("prepare_source", argv)


if __name__ == "__main__":
    sys.exit(main())
