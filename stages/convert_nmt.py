"""DVC stage `convert_nmt` (see `multiway convert_nmt --help`)."""

import sys

from pipeline.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("convert_nmt", argv)


if __name__ == "__main__":
    sys.exit(main())
