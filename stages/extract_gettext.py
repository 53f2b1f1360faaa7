"""DVC stage `extract_gettext` (see `multiway extract_gettext --help`)."""

import sys

from pipeline.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("extract_gettext", argv)


if __name__ == "__main__":
    sys.exit(main())
