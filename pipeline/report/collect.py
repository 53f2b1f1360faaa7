"""Read every stage's output into plain tables for the report.

Every reader returns ``None`` when its input does not exist (the stage has not run: the
report says so and goes on) and raises ``ValueError`` naming the file when the input exists
but is not what the producing stage writes (a half-edited or foreign file must not become a
silently wrong report). The shapes read here are those written by ``pipeline/cli.py``
(``data/metrics/<stage>[@<item>].json``), ``pipeline/corpus/build_corpus.py`` (``stats.json``),
``pipeline/train/train_encoder.py`` and ``pipeline/translate/train_nmt.py`` (training logs, via
``pipeline/live.py``), ``pipeline/evaluation/evaluate.py`` (``flatten`` keys and ``meta.json``) and
``pipeline/downstream/evaluate_downstream.py`` (``<task>/<encoder>/metrics.json``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import langs as langmod
from pipeline.io import metrics_path

logger = logging.getLogger(__name__)

_SCALAR = (int, float, bool, str, type(None))


def metrics_file(metrics_dir: str | Path, stage: str, item: str | None = None) -> Path:
    """``<metrics_dir>/<stage>[@<item>].json``, named as ``pipeline.io.metrics_path`` does."""
    return Path(metrics_dir) / metrics_path(stage, item).name


def read_json_input(path: str | Path) -> Any | None:
    """Parse a JSON file; ``None`` when it does not exist.

    Raises:
        ValueError: The file is not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc}); rerun the stage that writes it"
        ) from None


def read_metrics(path: str | Path) -> dict[str, Any] | None:
    """A flat stage-metrics file: name → number, boolean, string or null.

    Returns:
        The metrics, or ``None`` when the file does not exist.

    Raises:
        ValueError: The file is not JSON, not an object, or holds a nested value.
    """
    data = read_json_input(path)
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object of metrics, got {type(data).__name__}")
    nested = [k for k, v in data.items() if not isinstance(v, _SCALAR)]
    if nested:
        raise ValueError(
            f"{path} is not a flat metrics file: {nested[0]!r} holds a "
            f"{type(data[nested[0]]).__name__}; rerun the stage that writes it"
        )
    return data


def _number(path: Path, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: metric {key!r} must be a number, got {value!r}")
    return float(value)


def evaluation_scores(metrics_dir: str | Path, models: Mapping[str, Sequence[str]]
                      ) -> pd.DataFrame:
    """Per-language scores of every evaluated model, from ``evaluate@<model>.json``.

    Reads the ``<Task>/lang/<code>`` keys of :func:`pipeline.evaluation.evaluate.flatten` (the
    mean main score over the subsets involving the language); the other keys are subset
    scores and subset-grouped means, which the report recomputes per language.

    Args:
        metrics_dir: Directory of the stage metrics.
        models: Display label → its evaluated models (``evaluate`` matrix items, one per
            training seed).

    Returns:
        Columns ``model`` (label), ``task``, ``lang``, ``score`` (as stored, 0–1: the mean
        over the label's models that were evaluated); labels with none have no rows.

    Raises:
        ValueError: A file is malformed: not flat, a non-numeric score, an unknown
            language code, or no per-language score at all.
    """
    rows: list[dict[str, Any]] = []
    for label, name in ((label, n) for label, names in models.items() for n in names):
        path = metrics_file(metrics_dir, "evaluate", name)
        metrics = read_metrics(path)
        if metrics is None:
            logger.info("no evaluation of %s (%s missing)", name, path)
            continue
        found = 0
        for key, value in metrics.items():
            parts = key.split("/")
            if len(parts) != 3 or parts[1] != "lang":
                continue
            task, _, code = parts
            try:
                langmod.get(code)
            except ValueError as exc:
                raise ValueError(f"{path}: key {key!r}: {exc}") from None
            rows.append({"model": label, "task": task, "lang": code,
                         "score": _number(path, key, value)})
            found += 1
        if not found:
            raise ValueError(
                f"{path} has no per-language score ('<Task>/lang/<code>' keys); rerun "
                f"`dvc repro evaluate@{name}`"
            )
    table = pd.DataFrame(rows, columns=["model", "task", "lang", "score"])
    return table.groupby(["model", "task", "lang"], sort=False, as_index=False)["score"].mean()


def per_language_metrics(
    metrics_dir: str | Path, stage: str, codes: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The metrics of a per-language matrix stage (``translate@<lang>``) that exist."""
    out = {}
    for code in codes:
        metrics = read_metrics(metrics_file(metrics_dir, stage, code))
        if metrics is not None:
            out[code] = metrics
    return out


def corpus_stats(path: str | Path) -> dict[str, Any] | None:
    """``build_corpus``'s ``stats.json``; ``None`` when absent.

    Raises:
        ValueError: The file lacks a section ``build_corpus`` writes.
    """
    stats = read_json_input(path)
    if stats is None:
        return None
    need = ("rows", "dropped_by_reason", "dropped_by_lang", "failures", "mean_chars")
    missing = [k for k in need if not isinstance(stats, dict) or not isinstance(stats.get(k), dict)]
    if missing:
        raise ValueError(
            f"{path} is not a build_corpus stats file (no {', '.join(missing)}); rerun "
            "`dvc repro build_corpus`"
        )
    return stats


def loss_curve(log_dir: str | Path) -> pd.DataFrame | None:
    """A ``train_encoder`` training log (``step``, ``loss``, terms, ...); ``None`` when absent.

    Raises:
        ValueError: Not a DVCLive log with a ``loss`` series.
    """
    return _training_log(log_dir, ("loss",), "train_encoder")


def nmt_history(log_dir: str | Path) -> pd.DataFrame | None:
    """``train_nmt``'s evaluation history (``step``, ``train_loss``, ``dev_loss``, ...).

    Raises:
        ValueError: Not a DVCLive log with those series.
    """
    return _training_log(log_dir, ("train_loss", "dev_loss"), "train_nmt")


def _training_log(log_dir: str | Path, needs: tuple[str, ...], stage: str) -> pd.DataFrame | None:
    from pipeline.live import read_log

    log = read_log(log_dir)
    missing = [name for name in needs if log is not None and name not in log.columns]
    if missing:
        raise ValueError(f"{log_dir} is a training log without {missing} (it has "
                         f"{list(log.columns)}); rerun the {stage} stage that writes it")
    return log


def _result_file(eval_dir: str | Path, name: str, file: str) -> Path:
    """``file`` in the result folder ``evaluate`` writes for model ``name``."""
    from pipeline.encoders.catalog import model_label
    from pipeline.evaluation.evaluate import result_dir

    return result_dir(eval_dir, model_label(name)) / file


def eval_meta(eval_dir: str | Path, name: str) -> dict[str, Any] | None:
    """The ``meta.json`` ``evaluate`` writes in a model's result folder (suite, tasks, origin).

    Raises:
        ValueError: It is not a JSON object.
    """
    path = _result_file(eval_dir, name, "meta.json")
    meta = read_json_input(path)
    if meta is not None and not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    return meta


def outcomes(eval_dir: str | Path, name: str, file: str) -> pd.DataFrame | None:
    """A per-item outcome table ``evaluate`` keeps in a model's folder, or ``None``.

    ``file``: ``verse_mining.parquet`` (:mod:`pipeline.evaluation.verse_mining`) or
    ``item_outcomes.parquet`` (:mod:`pipeline.evaluation.items`).
    """
    path = _result_file(eval_dir, name, file)
    return pd.read_parquet(path) if path.is_file() else None


@dataclasses.dataclass(frozen=True)
class DownstreamResult:
    """One downstream run: a task fine-tuned on one encoder.

    Attributes:
        task: Task name (directory under the downstream output).
        encoder: Encoder directory name.
        metrics: The flat metrics (``<variant>/<metric>/<subset or group>`` and ``.../std``).
        figure: The feature figure, when the run drew one.
    """

    task: str
    encoder: str
    metrics: dict[str, Any]
    figure: Path | None


def downstream_results(root: str | Path) -> list[DownstreamResult]:
    """Every ``<root>/<task>/<encoder>/metrics.json`` (sorted); empty when there is none.

    Raises:
        ValueError: A metrics file is malformed.
    """
    results = []
    for path in sorted(Path(root).glob("*/*/metrics.json")):
        metrics = read_metrics(path)
        figure = path.parent / "features.png"
        results.append(DownstreamResult(
            task=path.parent.parent.name, encoder=path.parent.name, metrics=metrics or {},
            figure=figure if figure.is_file() else None,
        ))
    return results
