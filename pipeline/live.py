"""Training logs in DVCLive's format, written from the history a training stage keeps.

A log directory holds ``metrics.json`` (the last value of each series and its ``step``) and
``plots/metrics/<name>.tsv`` (``step`` and the value, one row per logged step), which DVC
shows with ``dvc plots show`` / ``dvc plots diff`` and ``dvc exp show`` (each training stage
declares the two in ``dvc.yaml``). The training stages (``train_encoder``, ``train_drmim``,
``train_nmt``) keep their history in their checkpoints and rewrite the whole log from it, so
a resumed run's log continues the interrupted one's without repeating steps, and a rerun's is
byte-identical (no timestamps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

#: Where DVCLive writes the series of a log directory.
SERIES_DIR = Path("plots") / "metrics"


def write_log(directory: str | Path, rows: Sequence[Mapping[str, float]]) -> None:
    """Write ``rows`` (each a ``step`` and the values logged at it) as a DVCLive log.

    Any earlier log in ``directory`` is replaced. A name with ``/`` (``base/seed13/loss``)
    groups its series in a subdirectory; a NaN value (a series not logged at that step) is
    left out.

    Raises:
        ValueError: A row has no integer ``step``, or the steps do not increase.
    """
    from dvclive import Live

    class FilesOnly(Live):
        """DVCLive's files without its lookup of the DVC repository.

        The stage already runs under ``dvc repro`` or ``dvc exp run``; the lookup (git revision,
        experiment name) fails in a repository without commits and runs ``dvc init`` in a git
        repository without DVC.
        """

        def _init_dvc(self) -> None:
            self._dvc_file = "dvc.yaml"  # never written: dvcyaml=None

    steps = [row.get("step") for row in rows]
    if not all(isinstance(s, int) for s in steps) or any(a >= b for a, b in zip(steps, steps[1:])):
        raise ValueError(f"a training log needs increasing integer steps, got {steps[:10]}")
    with FilesOnly(str(directory), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        for row in rows:
            live.step = row["step"]
            for name, value in row.items():
                if name != "step" and value == value:  # NaN: nothing logged at this step
                    live.log_metric(name, value)


def read_log(directory: str | Path) -> pd.DataFrame | None:
    """A log written by :func:`write_log` as one table: ``step``, then a column per series.

    Columns are the series names in alphabetical order; ``None`` when there is no log.

    Raises:
        ValueError: A series file is not a ``step``/value table.
    """
    import pandas as pd

    series_dir = Path(directory) / SERIES_DIR
    files = sorted(series_dir.rglob("*.tsv")) if series_dir.is_dir() else []
    if not files:
        return None
    table: pd.DataFrame | None = None
    for file in files:
        name = file.relative_to(series_dir).with_suffix("").as_posix()
        series = pd.read_csv(file, sep="\t")
        if list(series.columns) != ["step", file.stem]:
            raise ValueError(f"{file} is not a DVCLive series (step, {file.stem}): "
                             f"columns {list(series.columns)}; rerun the training stage")
        series = series.rename(columns={file.stem: name})
        table = series if table is None else table.merge(series, on="step", how="outer")
    return table.sort_values("step", ignore_index=True)
