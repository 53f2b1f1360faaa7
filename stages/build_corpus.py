"""DVC stage ``build_corpus``.

Its config class and ``run`` are in ``pipeline/corpus/build_corpus.py``.
"""

import sys

from pipeline.cli import run_stage
from pipeline.corpus import build_corpus


def main(argv: list[str] | None = None) -> int:
    return run_stage(build_corpus, argv)


if __name__ == "__main__":
    sys.exit(main())
