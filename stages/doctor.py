"""DVC stage `doctor`: the preflight check (see `multiway doctor --help`)."""

import sys

from pipeline.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["doctor", "--record", "data/doctor.json", *(argv or [])])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
