"""The README's commands, run as written on a fresh copy of the repository.

Every ```` ```bash ```` block of README.md runs in a copy of the working tree (tracked files and
untracked ones git does not ignore: what a clone of the next commit holds), one ``bash -e``
process per block, with the test's environment as ``PATH`` minus the venv: a block that
needs the venv must activate it itself, as a reader has to. ``.venv`` in the copy is the
test's own environment, as ``make setup`` leaves it. Sizes are shrunk by a params overlay
committed in the copy before the blocks run. A block the README marks
``<!-- not run by tests: <why> -->`` is checked, not run: each ``multiway`` command parses
(every flag exists for its subcommand), each ``make`` target dry-runs, each stage named
in a ``dvc repro`` exists. Ad-hoc ``multiway`` commands must leave ``git status`` as it was.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import build_parser
from pipeline.profiles import apply_profile
from tests.fixtures.repo import copy_worktree

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
BLOCK = re.compile(r"(?:<!-- not run by tests: (?P<why>.+?) -->\n)?```bash\n(?P<body>.*?)```",
                   re.S)
# Sizes only, so the runnable blocks take about a minute on one core.
OVERLAY = """\
prepare_source: {limit: 16}
translate: {beam_size: 1, max_batch_tokens: 512, max_decoding_length: 32, intra_threads: 1,
            shard_size: 8}
import_encoder: {threads: 1}
mine: {threads: 1}
"""


def _blocks() -> list[tuple[str | None, str]]:
    """``(reason not run or None, body)`` of every bash block of README.md, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [(m["why"], m["body"]) for m in BLOCK.finditer(text)]


def _commands(body: str) -> list[str]:
    """The command lines of a block (continuations joined, comments and blanks dropped)."""
    joined = body.replace("\\\n", " ")
    return [line for line in joined.splitlines() if shlex.split(line, comments=True)]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A committed copy of the working tree with the overlay applied, and its environment."""
    base = tmp_path_factory.mktemp("readme")
    repo = copy_worktree(base / "repo")
    (base / "tiny.yaml").write_text(OVERLAY)
    apply_profile("tiny", repo / "params.yaml", profiles_dir=base)
    (repo / ".venv").symlink_to(VENV)
    _git(repo, "init", "-q")
    (repo / ".git/info/exclude").write_text(".venv\n")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "fresh clone")
    path = [p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != VENV / "bin"]
    env = {**os.environ, "PATH": os.pathsep.join(path), "PYTHONPATH": str(repo),
           "TMPDIR": str(base), "OMP_NUM_THREADS": "1"}
    env.pop("VIRTUAL_ENV", None)
    return repo, env


def test_every_block_runs_or_says_why_not():
    blocks = _blocks()
    assert blocks and any(why is None for why, _ in blocks)
    for why, body in blocks:
        assert why is None or why.strip(), body


@pytest.mark.parametrize("line", [line for _, body in _blocks() for line in _commands(body)
                                  if line.startswith("multiway ")])
def test_multiway_commands_parse(line):
    argv = shlex.split(line, comments=True)[1:]
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            build_parser().parse_args(argv)
        except SystemExit as stop:  # --help exits 0, an unknown flag 2
            code = stop.code
    assert code == 0, f"{line}: {err.getvalue()}"


def test_blocks_not_run_name_real_targets(fresh_copy):
    repo, env = fresh_copy
    stages = subprocess.run([str(VENV / "bin/dvc"), "stage", "list", "--name-only"], cwd=repo,
                            env=env, capture_output=True, text=True, check=True).stdout.split()
    for why, body in _blocks():
        if why is None:
            continue
        for line in _commands(body):
            words = shlex.split(line, comments=True)
            if words[0] == "make":
                done = subprocess.run(["make", "-n", *words[1:]], cwd=repo, env=env,
                                      capture_output=True, text=True, check=False)
                assert done.returncode == 0, f"{line}: {done.stderr}"
            elif words[:2] == ["dvc", "repro"]:
                targets = [w for w in words[2:] if not w.startswith("-")]
                assert set(targets) <= set(stages), f"{line}: no such stage"


def test_blocks_run_as_written(fresh_copy):
    repo, env = fresh_copy
    marks = repo.parent / "status"
    marks.mkdir()
    for number, (why, body) in enumerate(_blocks()):
        if why is not None:
            continue
        script = []
        for i, line in enumerate(_commands(body)):
            if line.startswith("multiway "):  # ad hoc: git status before and after
                mark = shlex.quote(str(marks / f"{number}-{i}"))
                line = (f"git status --porcelain > {mark}.before\n{line}\n"
                        f"git status --porcelain > {mark}.after")
            script.append(line)
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", "\n".join(script)],
                              cwd=repo, env=env, capture_output=True, text=True,
                              timeout=900, check=False)
        assert done.returncode == 0, f"README block {number} failed:\n{body}\n" \
                                     f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        assert "Traceback" not in done.stderr, done.stderr[-6000:]
    assert any(marks.glob("*.after"))
    for after in sorted(marks.glob("*.after")):
        before = after.with_suffix(".before")
        assert after.read_text() == before.read_text(), \
            f"an ad-hoc multiway command changed the repository ({after.stem}):\n" \
            f"{before.read_text()}---\n{after.read_text()}"


def test_docs_link_only_inside_the_repository():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(ROOT) and path.exists(), f"{doc.name}: {target}"
        assert not re.search(r"(?<![\w.])/work/|(?<!\.)\.\./|\bshared/", text), doc.name
