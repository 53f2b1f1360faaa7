"""DVC stage `import_encoder` (see `multiway import_encoder --help`)."""

import sys

from pipeline.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("import_encoder", argv)


if __name__ == "__main__":
    sys.exit(main())
