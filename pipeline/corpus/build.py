"""The ``build_corpus`` stage: join, filter, split, and derive the En-X and human corpora.

Inputs: the English source table (``id`` + ``langs.source`` column) and one translation table
per pool language, ``<translated_dir>/<lang>.parquet`` (``id`` + ``<lang>``), whose ids must
be exactly the source ids. A row is kept only when every one of its translations passes
every filter of :mod:`pipeline.corpus.filters` (a multi-way row must be complete).

Outputs in ``output_dir`` (texts are never modified):

- ``multiway.parquet``: ``id``, ``split`` (``train``/``dev``), ``eng_Latn``, then one column
  per pool language in ``langs.pool`` order.
- ``enx.parquet``: the English-centric baseline of the same size: ``id``, ``split``,
  ``lang`` (FLORES code of X, drawn from the pool, balanced within each split),
  ``eng_Latn`` and ``x`` (the translation into ``lang``); one row per multi-way row, so both
  corpora hold the same English sentences.
- ``human.parquet``: only when ``references`` is set and has every pool language: the
  multi-way rows (same ``id``, ``split``, English) with the human translations instead of
  the machine ones, an upper bound for later comparisons. Rows without a reference (or
  with an empty one) are left out and counted.
- ``stats.json``: row counts, rows dropped by first failing filter and by language,
  per-(language, filter) failure counts, mean characters per language, En-X language counts.
- ``meta.json``: resolved config, versions, git revision.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import langs as langs_mod
from pipeline.config import BuildCorpusConfig, LangsConfig, to_dict
from pipeline.corpus.filters import REASONS, failures
from pipeline.corpus.split import SPLITS, assign_split, sample_enx
from pipeline.io import read_table, write_json, write_table
from pipeline.runtime import write_meta

logger = logging.getLogger(__name__)

# What to look at when a filter removed everything (named in the "no rows left" error).
_FIX = {
    "empty": "the translations are empty; check the translate stage",
    "repeat": "raise build_corpus.max_repeat or check the translations",
    "copy": "raise build_corpus.max_copy_ratio or check that the model translates",
    "script": "lower build_corpus.min_script_fraction or check the target-language tags",
    "too_short": "lower build_corpus.min_length_ratio or check the translations",
    "too_long": "raise build_corpus.max_length_ratio or check the translations",
}


def _sample(values: set[str], k: int = 3) -> str:
    return ", ".join(repr(v) for v in sorted(values)[:k])


def _unique_ids(df: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    df = df.assign(id=df["id"].astype(str))
    dup = df["id"].duplicated()
    if dup.any():
        raise ValueError(
            f"{path} has {int(dup.sum())} duplicated id(s) ({_sample(set(df['id'][dup]))}); "
            "ids must be unique"
        )
    return df


def read_source(path: str | Path, source: str) -> pd.DataFrame:
    """Read the source table (``id`` as str, unique) with missing texts as ``""``.

    Args:
        path: Source Parquet from ``prepare_source``.
        source: Source language column.

    Returns:
        Columns ``id`` and ``source``.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A column is missing or an id is duplicated.
    """
    df = _unique_ids(read_table(path, columns=["id", source]), path)
    return df.assign(**{source: df[source].fillna("")})


def read_translation(translated_dir: str | Path, lang: str, source_ids: pd.Series) -> pd.Series:
    """Read one language's translations, aligned to the source ids.

    Args:
        translated_dir: Directory holding ``<lang>.parquet``.
        lang: FLORES code of the language.
        source_ids: The source ids, in source order.

    Returns:
        The translations in source order (index = position in the source), nulls as ``""``.

    Raises:
        FileNotFoundError: The translation file is missing (names the stage to run).
        ValueError: Its ids are not exactly the source ids, or a column is missing.
    """
    path = Path(translated_dir) / f"{lang}.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"translation file {path} is missing; run `dvc repro translate@{lang}`"
        )
    df = _unique_ids(read_table(path, columns=["id", lang]), path)
    have, want = set(df["id"]), set(source_ids)
    if have != want:
        missing, extra = want - have, have - want
        raise ValueError(
            f"{path} ids do not match the source: {len(missing)} source id(s) missing "
            f"({_sample(missing)}), {len(extra)} unknown id(s) ({_sample(extra)}); "
            f"re-run `dvc repro translate@{lang}` on the current source"
        )
    texts = df.set_index("id")[lang].reindex(source_ids.to_numpy()).reset_index(drop=True)
    return texts.fillna("")  # a null translation is an empty one


def filter_rows(
    src: pd.DataFrame, translations: dict[str, pd.Series], source: str, cfg: BuildCorpusConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run every filter on every translation and decide which rows to keep.

    Args:
        src: Source table (``id``, ``source``).
        translations: Language → translations aligned with ``src``.
        source: Source language column.
        cfg: Filter thresholds.

    Returns:
        A boolean keep-mask over the rows, and the drop statistics: ``dropped_by_reason``
        (each dropped row counted once, under the first failing filter in
        :data:`~pipeline.corpus.filters.REASONS` order), ``dropped_by_lang`` (rows where
        the language fails anything) and ``failures`` (language → filter → translations
        failing it; one translation may fail several filters).
    """
    n = len(src)
    # fails[r][i]: row i has at least one translation failing filter REASONS[r].
    fails = np.zeros((len(REASONS), n), dtype=bool)
    per_lang: dict[str, dict[str, int]] = {}
    by_lang: dict[str, int] = {}
    for lang, texts in translations.items():
        script = langs_mod.get(lang).script
        counts: Counter[str] = Counter()
        lang_fails = np.zeros(n, dtype=bool)
        rows = zip(texts.to_numpy(), src[source].to_numpy(), strict=True)
        for i, (text, sent) in enumerate(tqdm(rows, total=n, desc=f"filter {lang}", unit="sent")):
            failed = failures(text, sent, script, cfg)
            counts.update(failed)
            for reason in failed:
                fails[REASONS.index(reason), i] = True
            lang_fails[i] = bool(failed)
        per_lang[lang] = {r: counts[r] for r in REASONS}
        by_lang[lang] = int(lang_fails.sum())
    keep = ~fails.any(axis=0)
    first = fails.argmax(axis=0)[~keep]  # index of the first failing filter per dropped row
    by_reason = {r: int((first == k).sum()) for k, r in enumerate(REASONS)}
    return keep, {"dropped_by_reason": by_reason, "dropped_by_lang": by_lang, "failures": per_lang}


def _no_rows_error(n: int, stats: dict[str, Any]) -> ValueError:
    reason = max(REASONS, key=lambda r: stats["dropped_by_reason"][r])
    lang = max(stats["failures"], key=lambda lg: stats["failures"][lg][reason])
    return ValueError(
        f"no rows left after filtering {n} rows: the '{reason}' filter removed the most "
        f"({stats['dropped_by_reason'][reason]} rows, mostly in {lang}); {_FIX[reason]}"
    )


def build_human(
    multiway: pd.DataFrame, references: str | Path, source: str, pool: tuple[str, ...]
) -> pd.DataFrame | None:
    """The multi-way rows with human translations (from ``references``) instead of MT.

    Args:
        multiway: The filtered multi-way corpus (``id``, ``split``, ``source``, ``pool``).
        references: Parquet with ``id`` and human translations per language.
        source: Source language column (kept from ``multiway``: the original English).
        pool: Pool languages, all of which must be in ``references``.

    Returns:
        Same columns as ``multiway``, rows in its order, restricted to ids whose references
        are all present and non-empty; ``None`` when a pool language has no reference
        column (logged).

    Raises:
        FileNotFoundError: ``references`` does not exist.
        ValueError: ``references`` has no ``id`` column or duplicated ids.
    """
    path = Path(references)
    if not path.is_file():
        raise FileNotFoundError(
            f"build_corpus.references {path} does not exist; fix the path or set it to null "
            "to skip the human corpus"
        )
    refs = read_table(path)
    absent = [lang for lang in pool if lang not in refs.columns]
    if absent:
        logger.warning("no human corpus: %s lacks pool language(s) %s", path, absent)
        return None
    if "id" not in refs.columns:
        raise ValueError(f"{path} has no 'id' column; it has {list(refs.columns)}")
    refs = _unique_ids(refs[["id", *pool]], path)
    human = multiway[["id", "split", source]].merge(refs, on="id", how="inner")
    complete = human[list(pool)].fillna("").apply(lambda c: c.str.strip() != "").all(axis=1)
    human = human[complete].reset_index(drop=True)
    if len(human) < len(multiway):
        logger.warning("human corpus: %d of %d rows lack a (non-empty) reference in %s",
                       len(multiway) - len(human), len(multiway), path)
    return human


def run(cfg: BuildCorpusConfig, langs: LangsConfig) -> dict[str, Any]:
    """Build the multi-way, En-X and human corpora and their statistics.

    Args:
        cfg: Stage config.
        langs: Source language and target pool.

    Returns:
        Flat metrics: ``rows_in``, ``rows_out``, ``rows_train``, ``rows_dev``, ``dropped``,
        ``dropped_<filter>`` (by first failing filter), ``dropped_<lang>`` (rows where the
        language fails), ``enx_rows``, ``human_rows`` (0 when not built).

    Raises:
        FileNotFoundError: The source, a translation file or the references are missing.
        ValueError: Bad language codes, ids not matching the source, no rows left.
    """
    source = langs_mod.get(langs.source).code
    pool = langs_mod.validate(langs.pool)
    if not pool:
        raise ValueError("langs.pool is empty; list the target languages, e.g. [deu_Latn]")
    if source in pool:
        raise ValueError(f"langs.pool contains the source language {source}; remove it")
    out = Path(cfg.output_dir)

    src = read_source(cfg.source, source)
    # A row's split depends only on its id, so it is the same whichever rows survive.
    splits = np.array(assign_split(src["id"], cfg.dev_fraction, cfg.seed))
    translations = {lang: read_translation(cfg.translated_dir, lang, src["id"]) for lang in pool}
    keep, stats = filter_rows(src, translations, source, cfg)
    if not keep.any():
        raise _no_rows_error(len(src), stats)

    multiway = pd.DataFrame({
        "id": src["id"][keep].to_numpy(),
        "split": splits[keep],
        source: src[source][keep].to_numpy(),
        **{lang: translations[lang][keep].to_numpy() for lang in pool},
    })
    enx = sample_enx(multiway, source, pool, cfg.seed)
    human = build_human(multiway, cfg.references, source, pool) if cfg.references else None

    write_table(multiway, out / "multiway.parquet")
    write_table(enx, out / "enx.parquet")
    if human is not None:
        write_table(human, out / "human.parquet")
    elif (out / "human.parquet").exists():
        # A human corpus from an earlier run with references would otherwise look current.
        (out / "human.parquet").unlink()

    split_counts = multiway["split"].value_counts()
    rows = {
        "in": len(src), "out": len(multiway),
        **{s: int(split_counts.get(s, 0)) for s in SPLITS},
        "enx": len(enx), "human": 0 if human is None else len(human),
    }
    stats = {
        "rows": rows,
        **stats,
        "mean_chars": {c: float(multiway[c].str.len().mean()) for c in (source, *pool)},
        "enx_langs": {lang: int((enx["lang"] == lang).sum()) for lang in pool},
    }
    write_json(stats, out / "stats.json")
    write_meta(out / "meta.json", to_dict(cfg), langs=to_dict(langs))
    logger.info(
        "multi-way corpus: kept %d of %d rows (%d train, %d dev); dropped by filter %s",
        rows["out"], rows["in"], rows["train"], rows["dev"], stats["dropped_by_reason"],
    )
    return {
        "rows_in": rows["in"],
        "rows_out": rows["out"],
        "rows_train": rows["train"],
        "rows_dev": rows["dev"],
        "dropped": rows["in"] - rows["out"],
        **{f"dropped_{r}": c for r, c in stats["dropped_by_reason"].items()},
        **{f"dropped_{lang}": c for lang, c in stats["dropped_by_lang"].items()},
        "enx_rows": rows["enx"],
        "human_rows": rows["human"],
    }
