"""DVC stage `translate` (see `multiway translate --help`)."""

import sys

from pipeline.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("translate", argv)


if __name__ == "__main__":
    sys.exit(main())
