"""What the report's sections share: model labels, task families, cell formats, "not run"."""

from __future__ import annotations

import logging
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.report.render import Paragraph

logger = logging.getLogger(__name__)

RUNTIME_NOTE = ("Times, speed and memory of each stage run are in data/runtime/ "
                "(untracked; they vary with the machine).")


def not_run(what: str, path: str | Path, stage: str) -> Paragraph:
    """The line standing for a section whose input ``path`` does not exist."""
    return Paragraph(f"Not run: {what} ({path} does not exist; run `dvc repro {stage}`).")


def is_number(value: Any) -> bool:
    """A real number, not NaN (numpy scalars included; a bool is a flag, not a count)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and not math.isnan(value))


def fmt_int(value: Any) -> str:
    """A count with thousands separators; ``–`` when missing."""
    return f"{int(value):,}" if is_number(value) else "–"


def fmt_num(value: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals; ``–`` when missing."""
    return f"{value:.{digits}f}" if is_number(value) else "–"


def file_name(text: str) -> str:
    """``text`` made safe as part of a figure's file name."""
    return re.sub(r"[^\w.-]+", "_", text)


def model_labels(base: str, aligned: Mapping[str, tuple[str, ...]]
                 ) -> dict[str, tuple[str, ...]]:
    """Display label → its models (one per seed): ``base`` first, then ``aligned``'s regimes.

    Args:
        base: ``report.base``, the base encoder.
        aligned: ``report.aligned``, regime → its models.
    """
    return {"base": (base,), **aligned}


def join_names(names: Sequence[str]) -> str:
    """A regime's models for display: ``a-13``, or ``a-13, a-14, a-15``."""
    return ", ".join(names)


def task_family(task: str, families: Mapping[str, str]) -> str:
    """The family of a task: ``families[task]``, else its mteb task type, else ``Other``."""
    from pipeline.evaluation.tasks import PROJECT_TASKS

    if task in families:
        return families[task]
    if task in PROJECT_TASKS:
        return str(PROJECT_TASKS[task].metadata.type)
    import mteb

    try:
        return str(mteb.get_task(task).metadata.type)
    except KeyError:
        logger.warning("task %s is neither in report.families nor known to mteb", task)
        return "Other"


def ordered_tasks(tasks: list[str], families: Mapping[str, str]
                  ) -> tuple[list[str], dict[str, str]]:
    """Tasks grouped by family, in the order ``families`` lists them; task → family.

    Args:
        tasks: The task names.
        families: ``report.families``, task → family.
    """
    family_of = {t: task_family(t, families) for t in tasks}
    listed = list(families)
    order = list(dict.fromkeys([*families.values(), *sorted(family_of.values())]))
    ordered = sorted(family_of, key=lambda t: (order.index(family_of[t]),
                                               listed.index(t) if t in listed else len(listed), t))
    return ordered, family_of
