"""DVC stage `report` (see `multiway report --help`)."""

import sys

from pipeline.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("report", argv)


if __name__ == "__main__":
    sys.exit(main())
