import gettext
import hashlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.sources.extract_gettext import (
    ExtractGettextConfig,
    clean_message,
    is_prose,
    read_catalogs,
    run,
)
from tests.fixtures.gettext import write_mo


def test_write_mo_is_read_back_by_gettext(tmp_path):
    path = write_mo(tmp_path / "x.mo", {
        "Open": "Öffnen", "%d file\0%d files": "%d Datei\0%d Dateien", "menu\x04Quit": "Beenden",
    })
    with open(path, "rb") as fh:
        t = gettext.GNUTranslations(fh)
    assert t.gettext("Open") == "Öffnen"
    assert t.ngettext("%d file", "%d files", 2) == "%d Dateien"
    assert t.pgettext("menu", "Quit") == "Beenden"


@pytest.mark.parametrize("raw, clean", [
    ("cannot open %s", "cannot open"),
    ("%-10s is %1$s and %2$lu bytes", "is and bytes"),
    ("%'d items, %.2f%% done, %*d wide", "items, done, wide"),
    ("%(name)s said {name} and {0} and {x:>5}", "said and and"),
    ("100% sure", "100% sure"),  # a space flag is not a specifier
    ("%REGEXP%[OFFSET] skip", "%REGEXP%[OFFSET] skip"),  # a word, not a specifier
    ("%A   locale's full weekday name", "locale's full weekday name"),
    ("%snumbers use %s; same as %_d or %^a", "numbers use ; same as or"),
    ("Open _File", "Open File"),
    ("&Save as", "Save as"),
    ("ファイル(_F)を開く", "ファイルを開く"),
    ("TIME_STYLE and R&D stay", "TIME_STYLE and R&D stay"),
    ("first\\nsecond\\tthird", "first second third"),
    ("  line one\n\n      line   two\n", "line one line two"),
])
def test_clean_message(raw, clean):
    assert clean_message(raw) == clean


@pytest.mark.parametrize("text, prose", [
    ("--help", False),
    ("-a, --all", False),
    ("--sort=WORD [-]echo", False),
    ("ok", False),
    ("--all do not ignore entries", True),
    ("ファイル", True),
])
def test_is_prose(text, prose):
    assert is_prose(text) is prose


def _id(domain: str, eng: str) -> str:
    return f"{domain}:{hashlib.sha1(eng.encode()).hexdigest()[:12]}"


@pytest.fixture
def locale_root(tmp_path):
    root = tmp_path / "locale"
    write_mo(root / "de/LC_MESSAGES/demo.mo", {
        "Open _File": "_Datei öffnen",
        "cannot open %s": "kann %s nicht öffnen",
        "cannot open %s\n": "%s kann nicht geöffnet werden\n",  # same English once cleaned
        "--help": "--help",  # not prose: dropped
        "Linux kernel": "Linux kernel",  # identical to the English: None
        "%d file\0%d files": "%d Datei\0%d Dateien",
        "menu\x04Quit program": "Programm beenden",
        "%s: %s": "%s: %s",  # nothing left after cleaning: dropped
    })
    write_mo(root / "de/LC_MESSAGES/other.mo", {"Other domain": "Andere Domäne"})
    write_mo(root / "fr/LC_MESSAGES/demo.mo", {
        "Open _File": "Ouvrir le _fichier",
        "Quit program": "",  # untranslated entry kept by a sloppy compiler
        "Linux kernel": "noyau Linux",
    })
    write_mo(root / "pt/LC_MESSAGES/demo.mo", {"Open _File": "Abrir arquivo (pt)"})
    write_mo(root / "pt_BR/LC_MESSAGES/demo.mo", {"Open _File": "Abrir arquivo"})
    write_mo(root / "en/LC_MESSAGES/demo.mo", {"Open _File": "Open _File"})  # the source
    write_mo(root / "xx_YY/LC_MESSAGES/demo.mo", {"Open _File": "Xx"})  # unknown locale
    (root / "it/LC_MESSAGES").mkdir(parents=True)  # a language without this domain
    return root


def test_read_catalogs_builds_the_wide_table(locale_root):
    got = read_catalogs(locale_root, ["demo"])
    rows = [
        ("Linux kernel", None, "noyau Linux", None),
        ("Open File", "Datei öffnen", "Ouvrir le fichier", "Abrir arquivo"),  # pt_BR over pt
        ("Quit program", "Programm beenden", None, None),
        ("cannot open", "kann nicht öffnen", None, None),  # first msgid in sorted order wins
        ("file", "Datei", None, None),  # plural entry: singular only
    ]
    want = pd.DataFrame(
        [[_id("demo", e), "demo", e, de, fr, pt] for e, de, fr, pt in rows],
        columns=["id", "domain", "eng_Latn", "deu_Latn", "fra_Latn", "por_Latn"], dtype=object,
    )
    pd.testing.assert_frame_equal(got, want)


def test_read_catalogs_several_domains(locale_root):
    got = read_catalogs(locale_root, ["demo", "other"])
    assert got.domain.tolist() == ["demo"] * 5 + ["other"]
    last = got.iloc[-1]
    assert (last.id, last.eng_Latn, last.deu_Latn) == (
        _id("other", "Other domain"), "Other domain", "Andere Domäne"
    )
    assert last.fra_Latn is None and last.por_Latn is None


def test_read_catalogs_errors(locale_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="gettext directory not found: .*nowhere"):
        read_catalogs(tmp_path / "nowhere", ["demo"])
    with pytest.raises(ValueError, match=r"no glib\.mo under .* check the domain name"):
        read_catalogs(locale_root, ["glib"])
    with pytest.raises(ValueError, match="no gettext domain given"):
        read_catalogs(locale_root, [])
    (locale_root / "fr/LC_MESSAGES/demo.mo").write_bytes(b"\xde\x12\x04\x95" + b"\0" * 6)
    with pytest.raises(ValueError, match=r"fr/LC_MESSAGES/demo\.mo is not a readable \.mo"):
        read_catalogs(locale_root, ["demo"])


SYSTEM_CATALOG = Path("/usr/share/locale/de/LC_MESSAGES/coreutils.mo")


@pytest.mark.skipif(not SYSTEM_CATALOG.is_file(),
                    reason=f"{SYSTEM_CATALOG} is missing (coreutils translations not installed)")
def test_real_coreutils_catalogs():
    got = read_catalogs("/usr/share/locale", ["coreutils"])
    assert got.deu_Latn.notna().sum() > 1000
    assert got.id.is_unique and got.eng_Latn.is_unique
    assert not got.eng_Latn.str.contains(r"%s|%d|\n").any()
    six = ["deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "zho_Hans", "jpn_Jpan"]
    assert got[six].notna().all(axis=1).sum() > 1000


def test_run_writes_the_table_and_its_metrics(locale_root, tmp_path):
    out = tmp_path / "gettext/messages.parquet"
    cfg = ExtractGettextConfig(gettext_dir=str(locale_root), domains=("demo", "other"),
                               output=str(out))
    assert run(cfg) == {"messages": 6, "languages": 3}
    assert pq.ParquetFile(out).metadata.row_group(0).column(0).compression == "ZSTD"
    got = pq.read_table(out)
    assert got.equals(pa.Table.from_pandas(read_catalogs(locale_root, ["demo", "other"]),
                                           preserve_index=False))
    assert [p.name for p in out.parent.iterdir()] == ["messages.parquet"]  # no temp file left


def test_committed_message_table():
    """The frozen extract_gettext output in git: what prepare_seed reads on every host."""
    cfg = ExtractGettextConfig()
    got = pq.read_table(cfg.output).to_pandas()
    assert set(got.domain) == set(cfg.domains)
    assert got.id.is_unique and got.eng_Latn.is_unique
    assert not got.eng_Latn.str.contains(r"%s|%d|\n").any()
    six = ["deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "zho_Hans", "jpn_Jpan"]
    assert got[six].notna().all(axis=1).sum() > 1000
