"""DVC stage `build_corpus` (see `multiway build_corpus --help`)."""

import sys

from pipeline.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("build_corpus", argv)


if __name__ == "__main__":
    sys.exit(main())
