"""DVC stage `evaluate_downstream` (see `multiway evaluate_downstream --help`)."""

import sys

from pipeline.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate_downstream", argv)


if __name__ == "__main__":
    sys.exit(main())
