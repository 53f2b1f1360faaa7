"""Language identification: is a translation written in its target language?

The ``language`` filter of ``build_corpus``. A multilingual NMT model sometimes answers in
the wrong language (a neighbour of the target, or English left untranslated) with the right
script, which the ``script`` filter cannot see. lingua-language-detector (offline: its
n-gram models ship in the wheel) ranks candidate languages for each text; a translation
fails when the best-ranked candidate is another language. ``build_corpus.language_id``
chooses the candidates:

- ``pool``: the source language and the pool: the errors of a model asked for these
  languages (the wrong target, the source copied). The default.
- ``all``: every language lingua knows (75), for models that may drift anywhere (NLLB,
  M2M100); about 6x slower, and more false alarms on texts that are mostly names.
- ``none``: no language filter.

A text is flagged only when lingua places it clearly: the best candidate must lead the
second by ``build_corpus.language_id_margin`` (lingua's minimum relative distance; closer
calls are left alone). The default margin, 0.5, was chosen on the source split of the seed
data (the 7,582 verses the default profile translates), comparing the project's translations
with the human translations of the same verses (right language by construction), over the
pool languages: margin 0 flags 59 translations and 87 human verses (Latin-script verses
that are lists of Hebrew names read as English or Spanish); 0.25 flags 28 and 41; 0.5 flags
13 translations (decoder loops over invented names: "die Hethiteriteriteriter, die
Kariter") and 11 human verses (0.1 %; 8 of them Spanish); every hand-made wrong-language
case of the tests (French, German or English where Spanish or French was asked for) is
caught at each margin. ``all`` at margin 0 flags 0 to 2.5 % of the human verses.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline import langs as langs_mod

MODES: tuple[str, ...] = ("pool", "all", "none")


def lingua_language(code: str) -> Any:
    """Lingua's ``Language`` for a FLORES code.

    Looked up by ISO 639-1 code where there is one (lingua files Standard Arabic ``arb``
    under the macrolanguage ``ar``), else by the ISO 639-3 part (``zho_Hant``).

    Raises:
        ValueError: lingua has no model for the language.
    """
    from lingua import IsoCode639_1, IsoCode639_3, Language

    lang = langs_mod.get(code)
    try:
        if lang.iso1:
            return Language.from_iso_code_639_1(IsoCode639_1.from_str(lang.iso1))
        return Language.from_iso_code_639_3(IsoCode639_3.from_str(lang.iso3))
    except ValueError:
        raise ValueError(
            f"build_corpus.language_id: lingua-language-detector has no model for {code}; "
            "set build_corpus.language_id: none, or take the language out of langs.pool"
        ) from None


@functools.lru_cache(maxsize=2)
def detector(mode: str, languages: tuple[str, ...], margin: float = 0.5) -> Any | None:
    """A lingua detector for ``mode`` (see the module docstring), or ``None`` for ``none``.

    Args:
        mode: ``pool``, ``all`` or ``none``.
        languages: FLORES codes of the source and the pool (the ``pool`` candidates; every
            one must be known to lingua in any mode, since each is a target).
        margin: Lead of the best candidate over the second (0 to 0.99) below which a text
            is not placed at all.

    Raises:
        ValueError: An unknown mode, or a language lingua does not know.
    """
    if mode not in MODES:
        raise ValueError(f"build_corpus.language_id must be one of {', '.join(MODES)}, "
                         f"got '{mode}'")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"build_corpus.language_id_margin must be in [0, 1), got {margin}")
    if mode == "none":
        return None
    from lingua import LanguageDetectorBuilder

    candidates = [lingua_language(code) for code in languages]
    builder = (LanguageDetectorBuilder.from_all_languages() if mode == "all"
               else LanguageDetectorBuilder.from_languages(*candidates))
    return (builder.with_minimum_relative_distance(margin)
            .with_preloaded_language_models().build())


def wrong_language(texts: Sequence[str], lang: str, detect: Any) -> np.ndarray:
    """Which texts lingua ranks as another language than ``lang``.

    Args:
        texts: Non-empty translations.
        lang: Their target language (FLORES code).
        detect: A detector from :func:`detector`.

    Returns:
        One bool per text; a text lingua does not place (no letters, or a lead under the
        detector's margin) is not flagged.
    """
    target = lingua_language(lang)
    found = detect.detect_languages_in_parallel_of(list(texts))
    return np.array([f is not None and f != target for f in found], dtype=bool)
