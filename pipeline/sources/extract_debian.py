r"""An out-of-domain test set: full sentences from the gettext catalogs of Debian packages.

**What.** English sentences from software (dialogs, help texts, error messages) with their
translations by people into the project's FLORES languages: one many-way parallel table
(``data/gettext/debian.parquet``, committed) for evaluation only; no stage trains on it.

**Where from.** The ``.mo`` catalogs of pinned binary packages of Debian 12 (bookworm,
``main``): GNOME, KDE, Xfce and MATE applications, GNU tools, LibreOffice's language packs
(the ``libreoffice-l10n-<lang>`` debs, one package ``libreoffice-l10n`` here; its domains
``sw``, ``sc``, ``sd``, ... are Writer, Calc, Impress, ..., not languages). A translation
carries its package's licence, mostly GPL, LGPL or MPL-2.0 (``/usr/share/doc/<package>/copyright``):
every row names its ``domain`` and the ``package`` shipping it, which keeps attribution and
licence with the text.

**Filters**, each on the message as :func:`~pipeline.sources.extract_gettext.clean_message`
leaves it (so a GTK accelerator does not count as a symbol):

- English (:func:`english_reason`): one full sentence of ``min_words`` to ``max_words``
  words, on one line, with a capital start, a final ``.``, ``!`` or ``?`` (no ellipsis) and no
  sentence boundary inside; no placeholder (printf, ``{}``, any ``%``), markup, URL, symbol
  (``<>{}[]|\$@#*=~^_`%``) or licence/bug-report boilerplate. Menu labels, fragments and
  templates are not what a sentence encoder is tested on, and a placeholder dropped from both
  sides leaves a sentence with a hole.
- Translation (:func:`translation_reason`): non-empty, not the English again (case and
  punctuation aside), written in the language's script (half its letters at least, for
  non-Latin scripts), without markup or a leftover accelerator, and ``min_ratio`` to
  ``max_ratio`` times as long as the English: an untranslated or broken entry would be a free
  match in bitext mining.
- Catalogs exported from Launchpad (a ``X-Launchpad-Export-Date`` header: Ubuntu's
  translation platform, not the projects' own translation teams) are dropped.
- One row per cleaned English sentence: where domains share it, the domain with the most
  translations owns the row and the others fill in the languages it lacks.
- A row needs translations into ``min_languages`` of the kept languages at least.

**Re-extracting** (the stage is frozen in ``dvc.yaml``) needs an apt source for bookworm
``main``, ``apt-get update`` run as root, network to a Debian mirror and the pinned versions
still there (a point release replaces some; snapshot.debian.org keeps every version). A failing
``apt-get download`` stops the run with an error naming the package and version. The debs
(``<work_dir>/debs``) and their unpacked trees (``<work_dir>/unpacked``) stay in ``work_dir``,
which git ignores: a rerun downloads and unpacks only what is not there yet.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from pipeline import langs as langmod
from pipeline.config import LangsConfig
from pipeline.sources.extract_gettext import (
    _BRACES,
    _PRINTF,
    _catalog,
    _locale_dirs,
    clean_message,
    message_id,
    write_zstd,
)


@dataclasses.dataclass(frozen=True)
class ExtractDebianConfig:
    """``extract_debian``: Debian packages' catalogs → a full-sentence test set (frozen)."""

    # Debian 12 (bookworm) binary packages as ``name=version``, fetched by ``apt-get download``.
    packages: tuple[str, ...] = (
        "apt=2.6.2", "aptitude-common=0.8.13-5", "audacity-data=3.2.4+dfsg-1",
        "binutils-common=2.40-2", "coreutils=9.1-1", "digikam-data=4:7.9.0-1",
        "dolphin=4:22.12.3-1", "e2fsprogs-l10n=1.47.0-2", "evince-common=43.1-2+deb12u1",
        "evolution-common=3.46.4-2+deb12u1", "evolution-data-server-common=3.46.4-2+deb12u1",
        "file-roller=43.0-1", "filezilla-common=3.63.0-1+deb12u3",
        "gcc-12-locales=12.2.0-14+deb12u1", "gedit-common=44.2-1", "gettext=0.21-12",
        "gimp-data=2.10.34-1+deb12u10", "gnome-builder=43.6-3",
        "gnome-control-center-data=1:43.6-2~deb12u1", "gnome-disk-utility=43.0-1",
        "gnome-settings-daemon-common=43.0-4", "gnome-shell-common=43.9-0+deb12u2",
        "gnome-software-common=43.5-1~deb12u2", "gnome-terminal-data=3.46.8-1",
        "gnucash-common=1:4.13-1", "gnumeric-common=1.12.55-1", "gnupg-l10n=2.2.40-1.1+deb12u2",
        "gparted-common=1.3.1-1", "gramps=5.1.5-1", "hexchat-common=2.16.1-1",
        "inkscape=1.2.2-2+deb12u1", "k3b-i18n=22.12.3-1", "kdenlive-data=22.12.3-2+deb12u2",
        "kio=5.103.0-1+deb12u1", "konsole=4:22.12.3-1+deb12u1",
        "libglib2.0-data=2.74.6-2+deb12u9", "libgstreamer1.0-0=1.22.0-2+deb12u1",
        "libgtk-3-common=3.24.38-2~deb12u3", "libreoffice-l10n-ar=4:7.4.7-1+deb12u14",
        "libreoffice-l10n-bn=4:7.4.7-1+deb12u14", "libreoffice-l10n-de=4:7.4.7-1+deb12u14",
        "libreoffice-l10n-es=4:7.4.7-1+deb12u14", "libreoffice-l10n-fa=4:7.4.7-1+deb12u14",
        "libreoffice-l10n-fr=4:7.4.7-1+deb12u14", "libreoffice-l10n-hi=4:7.4.7-1+deb12u14",
        "libreoffice-l10n-id=4:7.4.7-1+deb12u14", "libreoffice-l10n-it=4:7.4.7-1+deb12u14",
        "libreoffice-l10n-ja=4:7.4.7-1+deb12u14", "libreoffice-l10n-ko=4:7.4.7-1+deb12u14",
        "libreoffice-l10n-pl=4:7.4.7-1+deb12u14", "libreoffice-l10n-pt-br=4:7.4.7-1+deb12u14",
        "libreoffice-l10n-pt=4:7.4.7-1+deb12u14", "libreoffice-l10n-ro=4:7.4.7-1+deb12u14",
        "libreoffice-l10n-ru=4:7.4.7-1+deb12u14", "libreoffice-l10n-tr=4:7.4.7-1+deb12u14",
        "libreoffice-l10n-uk=4:7.4.7-1+deb12u14", "libreoffice-l10n-vi=4:7.4.7-1+deb12u14",
        "libreoffice-l10n-zh-cn=4:7.4.7-1+deb12u14",
        "mate-control-center-common=1.26.0-2+deb12u1", "meld=3.22.0-2", "nautilus-data=43.2-1",
        "network-manager=1.42.4-1+deb12u1", "okular=4:22.12.3-1+deb12u1", "orca=43.1-1",
        "packagekit=1.2.6-5+deb12u1", "pidgin-data=2.14.12-1", "pulseaudio=16.1+dfsg1-2+b1",
        "rhythmbox-data=3.4.6-2", "seahorse=43.0-1", "shotwell-common=0.30.17-1",
        "systemd=252.39-1~deb12u2", "thunar-data=4.18.4-1", "totem-common=43.0-2",
        "util-linux-locales=2.38.1-5+deb12u3", "vlc-l10n=3.0.24-0+deb12u1",
        "wget=1.21.3-1+deb12u1", "xournalpp=1.1.3-1",
    )
    # Where the debs (``debs/``) and their unpacked trees (``unpacked/``) go; git ignores it.
    work_dir: str = "data/work/extract_debian"
    # FLORES languages kept, one column each: the non-English languages of prepare_seed.editions.
    languages: tuple[str, ...] = (
        "deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "arb_Arab", "kor_Hang", "ita_Latn",
        "por_Latn", "vie_Latn", "pes_Arab", "tgl_Latn", "zho_Hans", "jpn_Jpan", "hin_Deva",
        "ben_Beng", "tur_Latn", "ron_Latn", "pol_Latn", "ind_Latn", "ukr_Cyrl", "swh_Latn",
    )
    min_words: int = 6  # Fewest words of an English sentence (shorter ones: labels, fragments).
    max_words: int = 40  # Most words of an English sentence (longer ones: help paragraphs).
    # Fewest characters of a translation per character of its English (fewer: broken).
    min_ratio: float = 0.15
    # Most characters of a translation per character of its English (more: broken).
    max_ratio: float = 4.0
    # Fewest kept languages a row must be translated into.
    min_languages: int = 6
    # The sentence table, committed to git (re-extracting needs a Debian mirror).
    output: str = "data/gettext/debian.parquet"

logger = logging.getLogger(__name__)

_SOURCE = "eng_Latn"
#: The ``libreoffice-l10n-<lang>`` debs, read as one package: their catalogs sit in
#: :data:`_LO_RESOURCE` and are moved into the usual :data:`_LOCALE` layout when unpacked.
LIBREOFFICE = "libreoffice-l10n"
_LOCALE = Path("usr/share/locale")
_LO_RESOURCE = Path("usr/lib/libreoffice/program/resource")

MIN_SCRIPT = 0.5  # fewest of a translation's letters in its language's script

_MARKUP = re.compile(r"<[^>]*>|&[#\w]+;")
_SYMBOLS = re.compile(r"[<>{}\[\]|\\$@#*=~^_`%]")
_URL = re.compile(r"https?://|www\.|ftp://", re.I)
_END = re.compile(r"[.!?][\"')\u201d\u2019]?$")
_ELLIPSIS = re.compile(r"(\.\.\.|\u2026)[\"')]?$")
# A sentence boundary inside the message ("... range. Set Data ..."), initials and e.g., i.e.,
# etc. aside.
_INNER_BOUNDARY = re.compile(r"(?<!\b[A-Z])(?<!\be\.g)(?<!\bi\.e)(?<!\betc)[.!?]\s+[A-Z\"']")
_BOILERPLATE = re.compile(r"^(Copyright|\(C\)|Written by|Report bugs|This program is free)", re.I)
# In a translation: markup or escapes left over, an accelerator inside a word (minia&ture).
_TRANSLATION_SYMBOLS = re.compile(r'[_\\<>{}]|\w&\w|">')


def english_reason(raw: str, eng: str, min_words: int, max_words: int) -> str | None:
    """Why an English message is not one full sentence (``None`` when it is).

    Args:
        raw: The msgid as in the catalog.
        eng: The msgid after :func:`clean_message`.
        min_words: Fewest words.
        max_words: Most words.
    """
    body = raw.rstrip("\n")  # a trailing newline is layout, not a second line
    if "\n" in body or "\t" in body:
        return "multiline"
    if "%" in raw or _PRINTF.search(raw) or _BRACES.search(raw):
        return "placeholder"
    if _MARKUP.search(raw):
        return "markup"
    if _URL.search(eng):
        return "url"
    if _SYMBOLS.search(eng):
        return "symbols"
    if not eng or not "A" <= eng[0] <= "Z":
        return "no_capital"
    if not _END.search(eng) or _ELLIPSIS.search(eng):
        return "no_final_punctuation"
    if _BOILERPLATE.search(eng):
        return "boilerplate"
    if _INNER_BOUNDARY.search(eng):
        return "several_sentences"
    words = len(eng.split())
    if words < min_words:
        return "too_short"
    if words > max_words:
        return "too_long"
    return None


def _letters_only(text: str) -> str:
    return re.sub(r"\W+", "", text.casefold())


def translation_reason(text: str, eng: str, code: str, min_ratio: float,
                       max_ratio: float) -> str | None:
    """Why a cleaned translation of ``eng`` into ``code`` is not usable (``None``: it is)."""
    if not text:
        return "empty"
    if _letters_only(text) == _letters_only(eng):
        return "identical"
    if langmod.script_fraction(text, langmod.get(code).script) < MIN_SCRIPT:
        return "wrong_script"
    if _MARKUP.search(text) or "%" in text:
        return "markup"
    if _TRANSLATION_SYMBOLS.search(text):
        return "symbols"
    if not min_ratio <= len(text) / len(eng) <= max_ratio:
        return "length_ratio"
    return None


def _call(cmd: list[str], cwd: Path | None = None) -> str:
    """Run a command; its error (stderr, or why it could not start), ``""`` on success."""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        return str(exc)
    return (done.stderr.strip() or f"exit status {done.returncode}") if done.returncode else ""


def download(pin: str, debs: Path) -> Path:
    """The deb of ``pin`` (``name=version``) in ``debs``, fetched by ``apt-get download`` if absent.

    Raises:
        RuntimeError: ``apt-get download`` failed or wrote no deb; the message names the pin.
    """
    package, _, version = pin.partition("=")
    prefix = f"{package}_{version.replace(':', '%3a')}_"  # apt's file name: name_version_arch

    def found() -> list[Path]:
        return sorted(p for p in debs.glob("*.deb") if p.name.startswith(prefix))

    if not found():
        debs.mkdir(parents=True, exist_ok=True)
        error = _call(["apt-get", "download", pin], cwd=debs)
        if error or not found():
            raise RuntimeError(
                f"apt-get download {pin} failed ({error or 'no deb written'}): the stage needs "
                f"{package} at version {version} from a Debian 12 (bookworm) main source, "
                "`apt-get update` run as root and network to a mirror (snapshot.debian.org "
                "keeps old versions)")
    return found()[0]


def unpack(deb: Path, dest: Path) -> None:
    """``dpkg -x`` a deb into ``dest``; LibreOffice's catalogs go into ``usr/share/locale``.

    LibreOffice keeps them in ``usr/lib/libreoffice/program/resource/<lang>/LC_MESSAGES``,
    ``<lang>`` spelled ``pt-BR`` or ``pt_BR``: they move to ``usr/share/locale/pt_BR``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    error = _call(["dpkg", "-x", str(deb), str(dest)])
    if error:
        raise RuntimeError(f"dpkg -x {deb} {dest} failed ({error}); delete the deb to fetch it "
                           "again")
    resource = dest / _LO_RESOURCE
    for lang in sorted(resource.iterdir()) if resource.is_dir() else []:
        target = dest / _LOCALE / lang.name.replace("-", "_")
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        lang.rename(target)


def fetch(packages: tuple[str, ...], work_dir: str | Path) -> dict[str, Path]:
    """Download and unpack every pinned package, skipping what an earlier run left done.

    Returns:
        Package (:data:`LIBREOFFICE` for all its language packs) → its locale directory
        (``<work_dir>/unpacked/<package>/usr/share/locale``), in ``packages``' order.
    """
    work = Path(work_dir)
    roots: dict[str, Path] = {}
    for pin in tqdm(packages, desc="debian packages", unit="deb"):
        name = pin.partition("=")[0]
        package = LIBREOFFICE if name.startswith(LIBREOFFICE + "-") else name
        dest = work / "unpacked" / package
        roots.setdefault(package, dest / _LOCALE)
        deb = download(pin, work / "debs")
        done = work / "unpacked" / ".done" / deb.name
        if done.exists():
            continue
        logger.info("unpacking %s", deb.name)
        unpack(deb, dest)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.touch()
    return roots


def read_sentences(roots: Mapping[str, Path], cfg: ExtractDebianConfig,
                   ) -> tuple[pd.DataFrame, int]:
    """Read the catalogs of some packages into one wide table of full sentences.

    Args:
        roots: Package → its locale directory (``<locale>/LC_MESSAGES/<domain>.mo``). A
            domain is attributed to its package, so two packages may not share one.
        cfg: The languages kept and the filters' thresholds.

    Returns:
        The table: ``id`` (:func:`~pipeline.sources.extract_gettext.message_id` of the owning
        domain and the English), ``domain``, ``package``, ``eng_Latn``, then one column per
        kept language, sorted by code (``None`` where a row has no translation); rows sorted
        by domain and English. And the number of Launchpad catalogs dropped.

    Raises:
        ValueError: Two packages ship the same domain, or a catalog is unreadable.
    """
    kept = set(cfg.languages)
    texts: dict[str, dict[str, dict[str, str]]] = {}  # domain → English → code → translation
    owner: dict[str, str] = {}  # domain → package
    launchpad = 0
    for package, root in roots.items():
        locales = _locale_dirs(root) if root.is_dir() else {}
        locales = {code: d for code, d in locales.items() if code in kept}
        domains = sorted({p.stem for d in locales.values()
                          for p in (d / "LC_MESSAGES").glob("*.mo")})
        for domain in domains:
            if domain in owner:
                raise ValueError(f"packages {owner[domain]} and {package} both ship the gettext "
                                 f"domain {domain}; drop one of them from extract_debian.packages")
            owner[domain] = package
            rows = texts.setdefault(domain, {})
            english: dict[str, str | None] = {}  # msgid → its sentence (None: filtered out)
            for code, d in sorted(locales.items()):
                path = d / "LC_MESSAGES" / f"{domain}.mo"
                if not path.is_file():
                    continue
                pairs, header = _catalog(path)
                if header.get("x-launchpad-export-date"):
                    launchpad += 1
                    continue
                for msgid, msgstr in pairs:
                    if msgid not in english:
                        eng = clean_message(msgid)
                        bad = english_reason(msgid, eng, cfg.min_words, cfg.max_words)
                        english[msgid] = None if bad else eng
                    eng = english[msgid]
                    if eng is None:
                        continue
                    row = rows.setdefault(eng, {})
                    if code in row:  # the first msgid (in sorted order) giving this English wins
                        continue
                    text = clean_message(msgstr)
                    if translation_reason(text, eng, code, cfg.min_ratio, cfg.max_ratio) is None:
                        row[code] = text
        logger.info("%s: %d domains, %d languages", package, len(domains), len(locales))
    # One row per English sentence: the domain with the most translations owns it (the first
    # such in package order), the others fill in its missing languages.
    merged: dict[str, tuple[str, dict[str, str]]] = {}
    for domain, rows in texts.items():
        for eng, found in rows.items():
            if not found:
                continue
            if eng not in merged or len(found) > len(merged[eng][1]):
                merged[eng] = (domain, {**merged.get(eng, ("", {}))[1], **found})
            else:
                for code, text in found.items():
                    merged[eng][1].setdefault(code, text)
    codes = sorted(cfg.languages)
    records = [[message_id(domain, eng), domain, owner[domain], eng, *map(found.get, codes)]
               for eng, (domain, found) in merged.items() if len(found) >= cfg.min_languages]
    # object dtype keeps None for "no translation" (pandas 3 would infer str with NaN).
    table = pd.DataFrame(records, columns=["id", "domain", "package", _SOURCE, *codes],
                         dtype=object)
    table = table.sort_values(["domain", _SOURCE], ignore_index=True)
    logger.info("debian: %d sentences in %d languages or more; %d Launchpad catalogs dropped",
                len(table), cfg.min_languages, launchpad)
    return table, launchpad


def _check(cfg: ExtractDebianConfig, langs: LangsConfig) -> None:
    """Fail early, in one line, on a malformed pin or a language the filters cannot check."""
    bad = [p for p in cfg.packages if not all(p.partition("=")[0::2])]
    if bad:
        raise ValueError(f"extract_debian.packages: {bad} are not name=version pins "
                         "(e.g. coreutils=9.1-1)")
    langmod.validate(cfg.languages)
    for code in cfg.languages:
        langmod.check_script(langmod.get(code).script)
    missing = [c for c in langs.pool if c not in cfg.languages]
    if missing:
        raise ValueError(f"extract_debian.languages lacks {missing} of langs.pool; add them")


def run(cfg: ExtractDebianConfig, langs: LangsConfig) -> dict:
    """Stage ``extract_debian``: fetch the pinned packages and write the sentence table.

    The table is committed to git, zstd-compressed (level 19) like ``extract_gettext``'s.

    Returns:
        Metrics: ``rows``; ``languages`` (kept languages with a translation); ``packages``,
        ``domains``; ``launchpad_catalogs`` (dropped); ``rows_all_seen`` (rows translated
        into every ``langs.pool`` language); ``english_words_mean``; ``rows_<code>`` per
        kept language.
    """
    _check(cfg, langs)
    table, launchpad = read_sentences(fetch(cfg.packages, cfg.work_dir), cfg)
    write_zstd(table, cfg.output)
    codes = sorted(cfg.languages)
    present = table[codes].notna()
    words = table[_SOURCE].map(lambda s: len(s.split()))
    return {
        "rows": len(table),
        "languages": int(present.any().sum()),
        "packages": int(table["package"].nunique()),
        "domains": int(table["domain"].nunique()),
        "launchpad_catalogs": launchpad,
        "rows_all_seen": int(present[list(langs.pool)].all(axis=1).sum()),
        "english_words_mean": round(float(words.mean()), 2) if len(table) else 0.0,
        **{f"rows_{code}": int(present[code].sum()) for code in codes},
    }
