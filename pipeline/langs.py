"""Language codes.

The project names every language by its FLORES-200 code (``deu_Latn``): corpus columns,
params, stage names and file names all use it. This module converts it to the spellings
other tools want: NLLB (the same code), M2M100 (``__de__``), Marian/OPUS-MT pairs (``de``),
mteb (``deu-Latn``) and gettext locale directories (``de``, ``zh_CN``); and it says which
script a letter is written in (:func:`script_fraction`: the MT filters' and the test sets'
script checks).
"""

from __future__ import annotations

import difflib
import functools
import unicodedata
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    """One language as the project knows it.

    Attributes:
        code: FLORES-200 code, e.g. ``deu_Latn``.
        iso1: ISO 639-1 code used by M2M100 and OPUS-MT (``de``); ``""`` when none exists.
        name: English name.
        locales: gettext locale directory names under ``/usr/share/locale``.
    """

    code: str
    iso1: str
    name: str
    locales: tuple[str, ...] = ()

    @property
    def script(self) -> str:
        """ISO 15924 script code, e.g. ``Latn``."""
        return self.code.split("_")[1]

    @property
    def iso3(self) -> str:
        """ISO 639-3 part of the FLORES code, e.g. ``deu``."""
        return self.code.split("_")[0]


_TABLE = [
    Language("eng_Latn", "en", "English", ("en",)),
    Language("deu_Latn", "de", "German", ("de",)),
    Language("fra_Latn", "fr", "French", ("fr",)),
    Language("spa_Latn", "es", "Spanish", ("es",)),
    Language("ita_Latn", "it", "Italian", ("it",)),
    Language("por_Latn", "pt", "Portuguese", ("pt_BR", "pt")),
    Language("nld_Latn", "nl", "Dutch", ("nl",)),
    Language("cat_Latn", "ca", "Catalan", ("ca",)),
    Language("glg_Latn", "gl", "Galician", ("gl",)),
    Language("ron_Latn", "ro", "Romanian", ("ro",)),
    Language("pol_Latn", "pl", "Polish", ("pl",)),
    Language("ces_Latn", "cs", "Czech", ("cs",)),
    Language("slk_Latn", "sk", "Slovak", ("sk",)),
    Language("slv_Latn", "sl", "Slovenian", ("sl",)),
    Language("hrv_Latn", "hr", "Croatian", ("hr",)),
    Language("hun_Latn", "hu", "Hungarian", ("hu",)),
    Language("fin_Latn", "fi", "Finnish", ("fi",)),
    Language("est_Latn", "et", "Estonian", ("et",)),
    Language("lit_Latn", "lt", "Lithuanian", ("lt",)),
    Language("swe_Latn", "sv", "Swedish", ("sv",)),
    Language("dan_Latn", "da", "Danish", ("da",)),
    Language("nob_Latn", "nb", "Norwegian Bokmål", ("nb",)),
    Language("tur_Latn", "tr", "Turkish", ("tr",)),
    Language("vie_Latn", "vi", "Vietnamese", ("vi",)),
    Language("ind_Latn", "id", "Indonesian", ("id",)),
    Language("tgl_Latn", "tl", "Tagalog", ("fil", "tl")),
    Language("swh_Latn", "sw", "Swahili", ("sw",)),
    Language("epo_Latn", "eo", "Esperanto", ("eo",)),
    Language("rus_Cyrl", "ru", "Russian", ("ru",)),
    Language("ukr_Cyrl", "uk", "Ukrainian", ("uk",)),
    Language("bel_Cyrl", "be", "Belarusian", ("be",)),
    Language("bul_Cyrl", "bg", "Bulgarian", ("bg",)),
    Language("srp_Cyrl", "sr", "Serbian", ("sr",)),
    Language("ell_Grek", "el", "Greek", ("el",)),
    Language("heb_Hebr", "he", "Hebrew", ("he",)),
    Language("arb_Arab", "ar", "Arabic", ("ar",)),
    Language("pes_Arab", "fa", "Persian", ("fa",)),
    Language("hin_Deva", "hi", "Hindi", ("hi",)),
    Language("ben_Beng", "bn", "Bengali", ("bn",)),
    Language("tha_Thai", "th", "Thai", ("th",)),
    Language("kor_Hang", "ko", "Korean", ("ko",)),
    Language("jpn_Jpan", "ja", "Japanese", ("ja",)),
    Language("zho_Hans", "zh", "Chinese (Simplified)", ("zh_CN",)),
    Language("zho_Hant", "", "Chinese (Traditional)", ("zh_TW",)),
]

LANGUAGES: dict[str, Language] = {lang.code: lang for lang in _TABLE}


def get(code: str) -> Language:
    """Look a FLORES-200 code up.

    Args:
        code: e.g. ``deu_Latn``.

    Returns:
        The :class:`Language`.

    Raises:
        ValueError: The code is unknown; the message suggests the closest known codes.
    """
    try:
        return LANGUAGES[code]
    except KeyError:
        close = difflib.get_close_matches(code, list(LANGUAGES), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown language code '{code}'{hint} Use FLORES-200 codes "
            f"(e.g. deu_Latn); known: {', '.join(sorted(LANGUAGES))}"
        ) from None


def validate(codes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Check a list of codes, rejecting unknown ones and duplicates; return it as a tuple."""
    seen: set[str] = set()
    for code in codes:
        get(code)
        if code in seen:
            raise ValueError(f"language '{code}' is listed twice")
        seen.add(code)
    return tuple(codes)


def to_nllb(code: str) -> str:
    """NLLB-200 language token (identical to the FLORES-200 code)."""
    return get(code).code


def to_m2m100(code: str) -> str:
    """M2M100 language token, e.g. ``__de__``."""
    lang = get(code)
    if not lang.iso1:
        raise ValueError(f"{code} has no ISO 639-1 code, so M2M100 has no token for it")
    return f"__{lang.iso1}__"


def to_iso1(code: str) -> str:
    """ISO 639-1 code used in Marian/OPUS-MT model names (``Helsinki-NLP/opus-mt-en-de``)."""
    lang = get(code)
    if not lang.iso1:
        raise ValueError(f"{code} has no ISO 639-1 code")
    return lang.iso1


def to_mteb(code: str) -> str:
    """Mteb language spelling, e.g. ``deu-Latn``."""
    return get(code).code.replace("_", "-")


def from_locale(locale: str) -> str | None:
    """FLORES code for a gettext locale directory name, or ``None`` when not in the table."""
    for lang in _TABLE:
        if locale in lang.locales:
            return lang.code
    return None


# ---------------------------------------------------------------- scripts

# First word of a character's Unicode name -> ISO 15924 code of the script it belongs to.
# ``unicodedata.name`` covers every block of a script (Latin Extended-A/B/Additional,
# Arabic presentation forms, Hangul jamo and syllables, CJK extensions) without a table
# of code-point ranges to maintain.
_NAME_PREFIX_SCRIPT = {
    "LATIN": "Latn",
    "CYRILLIC": "Cyrl",
    "GREEK": "Grek",
    "HEBREW": "Hebr",
    "ARABIC": "Arab",
    "DEVANAGARI": "Deva",
    "BENGALI": "Beng",
    "THAI": "Thai",
    "HANGUL": "Hang",
    "HIRAGANA": "Hira",
    "KATAKANA": "Kana",  # also "KATAKANA-HIRAGANA PROLONGED SOUND MARK"
    "CJK": "Hani",  # CJK UNIFIED / COMPATIBILITY IDEOGRAPH-XXXX
    "IDEOGRAPHIC": "Hani",  # 々 IDEOGRAPHIC ITERATION MARK, 〇 IDEOGRAPHIC NUMBER ZERO
}

# Script of a language (the part after "_" in its FLORES code) -> character scripts that
# count as "in script". Japanese mixes kana and kanji; Chinese codes name the variant.
SCRIPT_CHARS: dict[str, frozenset[str]] = {
    **{script: frozenset({script}) for script in
       ("Latn", "Cyrl", "Grek", "Hebr", "Arab", "Deva", "Beng", "Thai", "Hang", "Hani")},
    "Hans": frozenset({"Hani"}),
    "Hant": frozenset({"Hani"}),
    "Jpan": frozenset({"Hani", "Hira", "Kana"}),
}


def check_script(script: str) -> None:
    """Raise ``ValueError`` unless ``script`` is one of :data:`SCRIPT_CHARS`."""
    if script not in SCRIPT_CHARS:
        raise ValueError(
            f"no script filter for script '{script}'; supported: {', '.join(sorted(SCRIPT_CHARS))}"
        )


@functools.lru_cache(maxsize=65536)
def char_script(ch: str) -> str | None:
    """ISO 15924 script of one letter, from its Unicode name.

    Args:
        ch: A single character.

    Returns:
        ``Latn``, ``Cyrl``, ``Grek``, ``Hebr``, ``Arab``, ``Deva``, ``Beng``, ``Thai``,
        ``Hang``, ``Hira``, ``Kana`` or ``Hani``; ``None`` for other scripts and unnamed
        characters. Fullwidth/halfwidth forms count as their base script.
    """
    name = unicodedata.name(ch, "")
    for width in ("FULLWIDTH ", "HALFWIDTH "):
        name = name.removeprefix(width)
    first = name.split(" ", 1)[0].split("-", 1)[0]
    return _NAME_PREFIX_SCRIPT.get(first)


@functools.lru_cache(maxsize=65536)
def _letter_script(ch: str) -> str | None | bool:
    # False for a non-letter (category other than L*), else char_script (None: no script).
    return char_script(ch) if unicodedata.category(ch).startswith("L") else False


def script_fraction(text: str, script: str) -> float:
    """Fraction of the letters of ``text`` that are written in ``script``.

    Only letters (Unicode category ``L*``) are counted: digits, punctuation, spaces and
    combining marks say nothing about the language.

    Args:
        text: A translation.
        script: Script part of the language's FLORES code (``Latn``, ``Jpan``, ``Hans``...).

    Returns:
        A value in [0, 1]; 1.0 when ``text`` has no letters (nothing contradicts the
        script; the ``empty`` and length filters judge such output).

    Raises:
        ValueError: ``script`` is not one of :data:`SCRIPT_CHARS`.
    """
    check_script(script)
    wanted = SCRIPT_CHARS[script]
    # Each distinct character is looked up once (a sentence repeats most of its letters):
    # this filter dominated the stage's time when it looked at every character.
    letters = in_script = 0
    for ch, count in Counter(text).items():
        script_of = _letter_script(ch)
        if script_of is not False:
            letters += count
            if script_of in wanted:
                in_script += count
    if not letters:
        return 1.0
    return in_script / letters
