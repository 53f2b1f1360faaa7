"""Human translations from gettext catalogs (``<root>/<locale>/LC_MESSAGES/<domain>.mo``).

Software messages translated by people: an out-of-domain, many-way parallel set that is
already on most Debian machines. Messages are cleaned the same way on both sides (format
specifiers, accelerators, escaped newlines and whitespace removed) and turned into one wide
table: ``id``, ``domain``, ``eng_Latn`` and one column per FLORES language.

The catalogs differ between hosts (package versions, installed locales), so the frozen stage
``extract_gettext`` (:func:`run`) writes the table once into git; ``prepare_seed`` reads that.
"""

from __future__ import annotations

import dataclasses
import gettext
import hashlib
import logging
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import langs as langmod
from pipeline.io import atomic_path
from pipeline.sources.text import collapse_whitespace


@dataclasses.dataclass(frozen=True)
class ExtractGettextConfig:
    """``extract_gettext``: the host's gettext catalogs → one message table (a frozen stage)."""

    # Root of the gettext catalogs (``<dir>/<locale>/LC_MESSAGES/*.mo``).
    gettext_dir: str = "/usr/share/locale"
    # Catalog names to read (``coreutils`` → ``coreutils.mo``).
    domains: tuple[str, ...] = ("coreutils",)
    # The message table, committed to git (the catalogs differ between hosts).
    output: str = "data/gettext/messages.parquet"

logger = logging.getLogger(__name__)

_SOURCE = "eng_Latn"
MIN_LETTERS = 3

# printf conversions: %s, %d, %-10s, %1$s, %lu, %'d, %Id (glibc), %.*f, %(name)s; a space
# flag is left out on purpose so "100% sure" is not read as "% s". strftime's %A, %Y, ...
# match too, with their own flags (%_d, %^a). A capital right after the conversion means a
# placeholder word, not a specifier ("%REGEXP%" stays), while "%snumbers" loses its "%s".
_PRINTF = re.compile(
    r"%(?:\d+\$|\([^)]*\))?[-+#0'I_^]*(?:\d+|\*)?(?:\.(?:\d+|\*))?"
    r"(?:hh|ll|[hlLqjzt])?[A-Za-z](?![A-Z])"
)
_BRACES = re.compile(r"\{[\w.]*(?:![rsa])?(?::[^{}]*)?\}")  # {name}, {0}, {}, {x:>5}
_ESCAPES = re.compile(r"\\[ntr]")  # a literal backslash-n left in the text
# GTK-style accelerators appended in CJK translations: "ファイル(_F)", "(&F)".
_ACCEL_SUFFIX = re.compile(r"\((?:_|&)[^\W_]\)")
# _File / &File: the marker starts a word, so TIME_STYLE and R&D stay intact.
_ACCEL = re.compile(r"(?<![\w&])[_&](?=[^\W_])")
# Command-line options (-a, --all, --sort=WORD, [-]echo): not prose on their own.
_OPTION = re.compile(r"(?<!\S)(?:\[-\]|--?)[^\W_][\w-]*(?:=\S*)?,?")


def clean_message(text: str) -> str:
    """Strip format specifiers, accelerators and escaped newlines; collapse whitespace.

    Args:
        text: A msgid or msgstr.

    Returns:
        The cleaned message (possibly empty).
    """
    text = text.replace("%%", " ")
    text = _PRINTF.sub(" ", text)
    text = _BRACES.sub(" ", text)
    text = _ESCAPES.sub(" ", text)
    text = _ACCEL_SUFFIX.sub("", text)
    text = _ACCEL.sub("", text)
    return collapse_whitespace(text)


def is_prose(text: str) -> bool:
    """Whether a cleaned message has at least :data:`MIN_LETTERS` letters outside option names.

    ``--help`` or ``-a, --all`` alone are not prose; ``--all do not ignore entries`` is.
    """
    return sum(ch.isalpha() for ch in _OPTION.sub("", text)) >= MIN_LETTERS


def message_id(domain: str, eng: str) -> str:
    """A row's id: ``"<domain>:"`` + the first 12 hex digits of the SHA-1 of its English."""
    return f"{domain}:{hashlib.sha1(eng.encode('utf-8')).hexdigest()[:12]}"


def _messages(path: Path) -> list[tuple[str, str]]:
    """``(msgid, msgstr)`` pairs of one catalog: no header, singular forms only, sorted."""
    return _catalog(path)[0]


def _catalog(path: Path) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """:func:`_messages` of one catalog, and its header's fields (lower-case keys)."""
    try:
        with open(path, "rb") as fh:
            catalog = gettext.GNUTranslations(fh)
    except (OSError, struct.error, UnicodeError, IndexError) as exc:
        raise ValueError(
            f"{path} is not a readable .mo catalog ({exc}); remove it or drop its domain"
        ) from None
    pairs = []
    # GNUTranslations has no public way to list its messages; _catalog is its parsed
    # msgid -> msgstr map. Plural entries are keyed (msgid, form index): keep form 0.
    for key, msgstr in catalog._catalog.items():  # type: ignore[attr-defined]
        if isinstance(key, tuple):
            if key[1] != 0:
                continue
            key = key[0]
        msgid = key.rsplit("\x04", 1)[-1]  # drop a msgctxt prefix
        if msgid and msgstr:  # msgid "" is the header
            pairs.append((msgid, msgstr))
    return sorted(pairs), catalog.info()


def _locale_dirs(root: Path) -> dict[str, Path]:
    """FLORES code → locale directory, preferring the locale listed first in :mod:`langs`."""
    best: dict[str, Path] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        code = langmod.from_locale(d.name)
        if code is None or code == _SOURCE:
            continue
        order = langmod.get(code).locales
        if code not in best or order.index(d.name) < order.index(best[code].name):
            best[code] = d
    return best


def read_catalogs(root: str | Path, domains: Sequence[str]) -> pd.DataFrame:
    """Read the gettext catalogs of some domains into one wide, multi-way table.

    For every ``<root>/<locale>/LC_MESSAGES/<domain>.mo`` whose locale maps to a FLORES code
    (:func:`pipeline.langs.from_locale`), messages are cleaned with :func:`clean_message`.
    An English message is kept when it :func:`is_prose`; a translation is kept (else
    ``None``) when it is prose too and differs from the English. Messages whose cleaned
    English coincide are merged (the first translation per language, in msgid order, wins),
    so the English column has no duplicates within a domain. Messages nobody translated are
    dropped.

    Args:
        root: Directory holding the locale directories (``/usr/share/locale``).
        domains: Catalog names, e.g. ``("coreutils",)``.

    Returns:
        Columns ``id`` (``"<domain>:"`` + the first 12 hex digits of the SHA-1 of the cleaned
        English; stable across runs and catalog versions), ``domain``, ``eng_Latn`` and one
        column per language found, sorted by code; rows sorted by domain and English.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: No domain given, a domain has no catalog for any known locale, or a
            catalog is unreadable.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"gettext directory not found: {root}; set gettext_dir to the root of "
            "<locale>/LC_MESSAGES/*.mo (usually /usr/share/locale)"
        )
    if not domains:
        raise ValueError("no gettext domain given; list at least one (e.g. coreutils)")
    locales = _locale_dirs(root)
    rows: dict[str, dict[str, str | None]] = {}
    codes: set[str] = set()
    for domain in domains:
        found = {
            code: d / "LC_MESSAGES" / f"{domain}.mo"
            for code, d in locales.items()
            if (d / "LC_MESSAGES" / f"{domain}.mo").is_file()
        }
        if not found:
            raise ValueError(
                f"no {domain}.mo under {root}/<locale>/LC_MESSAGES for any known locale; "
                "check the domain name (e.g. coreutils) and gettext_dir"
            )
        logger.info("gettext %s: %d languages", domain, len(found))
        codes.update(found)
        for code, path in sorted(found.items()):
            for msgid, msgstr in _messages(path):
                eng = clean_message(msgid)
                if not is_prose(eng):
                    continue
                row_id = message_id(domain, eng)
                row = rows.setdefault(row_id, {"id": row_id, "domain": domain, _SOURCE: eng})
                if row.get(code) is None:
                    text = clean_message(msgstr)
                    row[code] = text if is_prose(text) and text != eng else None
    columns = ["id", "domain", _SOURCE, *sorted(codes)]
    records = [[r.get(c) for c in columns] for r in rows.values()
               if any(r.get(c) is not None for c in codes)]
    # object dtype keeps None for "no translation" (pandas 3 would infer str with NaN).
    table = pd.DataFrame(records, columns=columns, dtype=object)
    table = table.sort_values(["domain", _SOURCE], ignore_index=True)
    logger.info("gettext: %d messages, %d languages", len(table), len(codes))
    return table


def run(cfg: ExtractGettextConfig) -> dict:
    """Stage ``extract_gettext``: write the message table of this host's catalogs.

    The table is committed to git (zstd-compressed to keep it small); its content, not its
    compression, is what ``prepare_seed`` copies into ``data/seed/gettext.parquet``.

    Returns:
        Metrics: ``messages`` and ``languages`` (besides English).
    """
    table = read_catalogs(cfg.gettext_dir, cfg.domains)
    write_zstd(table, cfg.output)
    return {"messages": len(table), "languages": len(table.columns) - 3}


def write_zstd(table: pd.DataFrame, path: str | Path) -> None:
    """Write a table committed to git as Parquet, zstd level 19 (small in git), atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp,
                       compression="zstd", compression_level=19)
