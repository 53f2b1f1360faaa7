"""The mteb suite catalogue (``configs/mteb.yaml``): suite key → tasks with their options.

A suite lists task names with options. A name of :data:`~pipeline.evaluation.tasks.PROJECT_TASKS`
is one of the project's own tasks (options: its constructor arguments); any other name is
looked up in mteb's registry (option: ``eval_splits``), so the ``paper`` suite resolves
offline even though its data needs the hub. Every task is restricted to the evaluated
languages.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline import langs as langmod
from pipeline.evaluation.tasks import PROJECT_TASKS, LocalData, get_project_task
from pipeline.io import read_yaml_mapping

logger = logging.getLogger(__name__)

DEFAULT_SUITES = "configs/mteb.yaml"
_HUB_OPTIONS = ("eval_splits",)
# Hub tasks spell some of the project's languages by another ISO 639-3 code of the same
# language (its macrolanguage, or an older code): Tatoeba and MASSIVE write Arabic "ara",
# BUCC and STS22 write Chinese "cmn", NTREX and MASSIVE write Persian "fas", ...
MTEB_ALIASES: dict[str, tuple[str, ...]] = {
    "arb_Arab": ("ara-Arab",),
    "pes_Arab": ("fas-Arab",),
    "zho_Hans": ("cmn-Hans",),
    "swh_Latn": ("swa-Latn",),
    "tgl_Latn": ("fil-Latn",),
}
_FROM_ALIAS = {alias: code for code, aliases in MTEB_ALIASES.items() for alias in aliases}


def mteb_spellings(code: str) -> tuple[str, ...]:
    """Every mteb language-script tag that means the FLORES language ``code``."""
    return (langmod.to_mteb(code), *MTEB_ALIASES.get(code, ()))


def from_mteb(tag: str) -> str:
    """The FLORES code of an mteb language-script tag (``ara-Arab`` → ``arb_Arab``)."""
    return _FROM_ALIAS.get(tag, tag.replace("-", "_"))


@dataclasses.dataclass(frozen=True)
class Suite:
    """One suite of the catalogue.

    Attributes:
        name: The suite key.
        description: Free text for people.
        tasks: Task name → options, in file order.
    """

    name: str
    description: str
    tasks: dict[str, dict[str, Any]]


def load_suites(path: str | Path = DEFAULT_SUITES) -> dict[str, Suite]:
    """Read the suite catalogue.

    Args:
        path: The YAML catalogue.

    Returns:
        Suite key → :class:`Suite`, in file order.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not a mapping of suites, or a suite is malformed.
    """
    path = Path(path)
    data = read_yaml_mapping(
        path, f"mteb suite catalogue not found: {path}; run from the repository root",
        "map suite keys to suites")
    suites = {}
    for key, entry in data.items():
        where = f"{path}:{key}"
        if not isinstance(entry, dict) or not isinstance(entry.get("tasks"), dict):
            raise ValueError(f"{where}: a suite needs a 'tasks' mapping (task name -> options)")
        unknown = set(entry) - {"description", "tasks"}
        if unknown:
            raise ValueError(
                f"{where}: unknown key(s) {sorted(unknown)} (allowed: description, tasks)"
            )
        tasks = {}
        for name, options in entry["tasks"].items():
            if options is not None and not isinstance(options, dict):
                raise ValueError(f"{where}.tasks.{name}: options must be a mapping or empty, "
                                 f"got {options!r}")
            tasks[str(name)] = dict(options or {})
        if not tasks:
            raise ValueError(f"{where}: the suite lists no tasks")
        suites[str(key)] = Suite(str(key), str(entry.get("description", "")), tasks)
    return suites


def get_suite(name: str, path: str | Path = DEFAULT_SUITES) -> Suite:
    """Look a suite up by key.

    Raises:
        ValueError: Unknown key; the message lists the known ones.
    """
    suites = load_suites(path)
    if name not in suites:
        close = difflib.get_close_matches(name, list(suites), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown mteb suite '{name}'{hint} (known: {', '.join(suites)})")
    return suites[name]


def _hub_task(name: str, options: dict[str, Any], languages: Sequence[str]) -> Any | None:
    """An mteb registry task restricted to ``languages``; ``None`` when no subset is left."""
    import mteb

    unknown = set(options) - set(_HUB_OPTIONS)
    if unknown:
        raise ValueError(f"mteb task {name}: unknown option(s) {sorted(unknown)} "
                         f"(allowed: {', '.join(_HUB_OPTIONS)})")
    try:
        task = mteb.get_task(name, eval_splits=options.get("eval_splits"))
    except KeyError as exc:
        raise ValueError(f"unknown task '{name}': neither a project task "
                         f"({', '.join(PROJECT_TASKS)}) nor an mteb task ({exc.args[0]})") from None
    # A subset is kept when every one of its language-script tags is evaluated (a pair
    # subset de-en needs both); mteb's own filter matches languages but not scripts.
    allowed = {tag for code in languages for tag in mteb_spellings(code)}
    by_subset = task.metadata.hf_subsets_to_langscripts
    kept = [s for s in task.hf_subsets if set(by_subset[s]) <= allowed]
    if not kept:
        logger.warning("mteb task %s has no subset in the evaluated languages; skipped", name)
        return None
    task.hf_subsets = kept
    return task


def resolve_tasks(
    suite: Suite,
    languages: Sequence[str],
    data: LocalData | None = None,
    seed: int = 42,
) -> list[Any]:
    """Instantiate a suite's tasks, restricted to ``languages``.

    Args:
        suite: The suite.
        languages: FLORES codes to evaluate (English included).
        data: Data paths of the project tasks.
        seed: Sampling seed of the project tasks.

    Returns:
        mteb task objects, in suite order (hub tasks with no subset left are skipped).

    Raises:
        ValueError: An unknown task or option, a bad language code, or nothing left to run.
    """
    languages = langmod.validate(tuple(languages))
    tasks = []
    for name, options in suite.tasks.items():
        if name in PROJECT_TASKS:
            tasks.append(
                get_project_task(name, data=data, languages=languages, seed=seed, **options)
            )
        elif (task := _hub_task(name, options, languages)) is not None:
            tasks.append(task)
    if not tasks:
        raise ValueError(f"suite '{suite.name}' has no task with subsets in {list(languages)}")
    return tasks
