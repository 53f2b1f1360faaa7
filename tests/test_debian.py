"""extract_debian offline: fake debs (apt-get and dpkg mocked) holding tiny .mo catalogs."""

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import LangsConfig
from pipeline.sources import extract_debian as deb
from pipeline.sources.extract_debian import (
    ExtractDebianConfig,
    english_reason,
    fetch,
    read_sentences,
    run,
    translation_reason,
)
from pipeline.sources.extract_gettext import clean_message, message_id
from tests.fixtures.gettext import HEADER, write_mo

LAUNCHPAD = HEADER + "X-Launchpad-Export-Date: 2023-01-01 10:00+0000\n"

E1 = "The document could not be saved to this folder."
E5 = "Replace every occurrence of the word in the whole document."
E6 = "Your changes will be lost if you do not save them."
EDITOR = "editor=1:2.0-1"  # an epoch: apt writes editor_1%3a2.0-1_<arch>.deb
LO = "4:7.4.7-1+deb12u14"


@pytest.mark.parametrize("raw, reason", [
    (E1, None),
    ("Choose a format, e.g. PNG or JPEG, for the exported image.", None),
    ("Are you sure you want to delete this account?\n", None),  # a trailing newline is layout
    ("Open _File", "no_final_punctuation"),
    ("Too short a sentence.", "too_short"),
    ("Cannot open %s because it is locked by another user.", "placeholder"),
    ("Cannot open {path} because it is locked by another user.", "placeholder"),
    ("Only 100% of the disk can be used by this partition.", "placeholder"),
    ("<b>Warning:</b> this will delete all of your saved files.", "markup"),
    ("The file was saved. Do you want to close it now?", "several_sentences"),
    ("Saving the document to the remote server, please wait...", "no_final_punctuation"),
    ("see the manual page for the full list of options.", "no_capital"),
    ("Read the full manual at https://example.org before you start.", "url"),
    ("Press Ctrl+Shift+[ to move the selected layer one step down.", "symbols"),
    ("The first line of the message\nand its second line.", "multiline"),
    ("Report bugs to the mailing list of the project, please.", "boilerplate"),
    ("This " + "very " * 40 + "long sentence.", "too_long"),
])
def test_english_filter_keeps_full_sentences_only(raw, reason):
    assert english_reason(raw, clean_message(raw), 6, 40) == reason


@pytest.mark.parametrize("text, code, reason", [
    ("Das Dokument konnte nicht in diesem Ordner gespeichert werden.", "deu_Latn", None),
    ("Документ не удалось сохранить в эту папку.", "rus_Cyrl", None),
    ("문서를 이 폴더에 저장할 수 없습니다.", "kor_Hang", None),
    ("この フォルダー に 文書 を 保存 できません。", "jpn_Jpan", None),
    ("", "deu_Latn", "empty"),
    ("the document could not be saved to this folder", "fra_Latn", "identical"),
    ("Dokument ne udalos sokhranit v etu papku.", "rus_Cyrl", "wrong_script"),
    ("Die <b>Datei</b> konnte nicht gespeichert werden, leider.", "deu_Latn", "markup"),
    ("Das Doku&ment konnte nicht gespeichert werden, leider.", "deu_Latn", "symbols"),
    ("Nein.", "deu_Latn", "length_ratio"),
])
def test_translation_filter(text, code, reason):
    assert translation_reason(text, E1, code, 0.15, 4.0) == reason


@pytest.fixture
def debs(tmp_path, monkeypatch):
    """Pins → fake deb trees, with ``subprocess.run`` standing in for apt-get and dpkg."""
    src = tmp_path / "src"
    loc = "usr/share/locale/{}/LC_MESSAGES/editor.mo"
    editor = src / EDITOR
    extra = {
        "de": {E6: "Ihre Änderungen gehen verloren, wenn Sie sie nicht speichern."},
        "fr": {E5: "Remplacer chaque occurrence du mot dans tout le document.",
               E6: "Vos modifications seront perdues si vous ne les enregistrez pas."},
        "ru": {E6: "Vashi izmeneniya budut utracheny, esli vy ikh ne sokhranite."},  # Latin
        "ko": {E6: "%s"},  # nothing left once cleaned
    }
    for lang, tr in {"de": "Das Dokument konnte nicht in diesem Ordner gespeichert werden.",
                     "fr": "Impossible d'enregistrer le document dans ce dossier.",
                     "es": "No se pudo guardar el documento en esta carpeta.",
                     "ru": "Документ не удалось сохранить в эту папку.",
                     "ko": "문서를 이 폴더에 저장할 수 없습니다.",
                     "ar": E1}.items():  # ar: the English again, dropped
        write_mo(editor / loc.format(lang), {
            E1: tr, "Open _File": "Datei _öffnen",
            "Cannot open %s because it is locked by another user.": "Kann %s nicht öffnen.",
            **extra.get(lang, {}),
        })
    write_mo(editor / loc.format("it"), {E1: "Impossibile salvare il documento qui."},
             header=LAUNCHPAD)  # exported from Launchpad: dropped
    # LibreOffice: <lang> under program/resource, spelled pt-BR or zh_CN; `sw` is Writer.
    writer = "usr/lib/libreoffice/program/resource/{}/LC_MESSAGES/sw.mo"
    for name, lang, e1, e5 in [
        ("pt-br", "pt-BR", "Não foi possível salvar o documento nesta pasta.",
         "Substituir cada ocorrência da palavra em todo o documento."),
        ("zh-cn", "zh_CN", "无法将文档保存到此文件夹。", "替换整个文档中该单词的每个出现。"),
        ("de", "de", "Das Dokument kann hier nicht gespeichert werden, leider.",
         "Jedes Vorkommen des Wortes im ganzen Dokument ersetzen."),
    ]:
        write_mo(src / f"libreoffice-l10n-{name}={LO}" / writer.format(lang), {E1: e1, E5: e5})
    calls = []

    def fake_run(cmd, cwd=None, **_):
        calls.append(cmd)
        if cmd[:2] == ["apt-get", "download"]:
            name, _, version = cmd[2].partition("=")
            if not (src / cmd[2]).is_dir():
                return subprocess.CompletedProcess(
                    cmd, 100, "", f"E: Version '{version}' for '{name}' was not found")
            (Path(cwd) / f"{name}_{version.replace(':', '%3a')}_all.deb").write_text(cmd[2])
        elif cmd[:2] == ["dpkg", "-x"]:
            shutil.copytree(src / Path(cmd[2]).read_text(), cmd[3], dirs_exist_ok=True)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(deb.subprocess, "run", fake_run)
    pins = (EDITOR, *(f"libreoffice-l10n-{n}={LO}" for n in ("pt-br", "zh-cn", "de")))
    return pins, calls


def _cfg(tmp_path, pins, **kw):
    return ExtractDebianConfig(packages=pins, work_dir=str(tmp_path / "work"),
                               output=str(tmp_path / "out/debian.parquet"), **kw)


def test_run_writes_the_merged_table_and_its_metrics(debs, tmp_path):
    pins, calls = debs
    cfg = _cfg(tmp_path, pins, min_languages=3)
    metrics = run(cfg, LangsConfig(pool=("deu_Latn", "fra_Latn")))
    out = Path(cfg.output)
    assert pq.ParquetFile(out).metadata.row_group(0).column(0).compression == "ZSTD"
    got = pq.read_table(out).to_pandas()
    codes = sorted(cfg.languages)
    assert list(got.columns) == ["id", "domain", "package", "eng_Latn", *codes]
    assert got.id.tolist() == [message_id("editor", E1), message_id("sw", E5)]
    assert got.domain.tolist() == ["editor", "sw"]  # `sw` is Writer's domain, not Swahili
    assert got.package.tolist() == ["editor", "libreoffice-l10n"]
    e1, e5 = (row.dropna().to_dict() for _, row in got[codes].iterrows())
    # E1: editor owns it (5 translations, ar identical, it from Launchpad), LibreOffice fills
    # por and zho; its deu stays editor's.
    assert sorted(e1) == ["deu_Latn", "fra_Latn", "kor_Hang", "por_Latn", "rus_Cyrl",
                          "spa_Latn", "zho_Hans"]
    assert e1["deu_Latn"] == "Das Dokument konnte nicht in diesem Ordner gespeichert werden."
    assert e1["por_Latn"] == "Não foi possível salvar o documento nesta pasta."  # pt-BR
    # E5: Writer has 3 translations, editor 1 (fra), which fills in.
    assert e5 == {"deu_Latn": "Jedes Vorkommen des Wortes im ganzen Dokument ersetzen.",
                  "fra_Latn": "Remplacer chaque occurrence du mot dans tout le document.",
                  "por_Latn": "Substituir cada ocorrência da palavra em todo o documento.",
                  "zho_Hans": "替换整个文档中该单词的每个出现。"}
    # E6 (deu, fra; rus in Latin letters, kor empty) has 2 languages: dropped.
    assert metrics == {
        "rows": 2, "languages": 7, "packages": 2, "domains": 2, "launchpad_catalogs": 1,
        "rows_all_seen": 2, "english_words_mean": 9.5,
        **{f"rows_{c}": int(c in e1) + int(c in e5) for c in codes},
    }
    locale = tmp_path / "work/unpacked/libreoffice-l10n/usr/share/locale"
    assert sorted(p.name for p in locale.iterdir()) == ["de", "pt_BR", "zh_CN"]
    assert [p.name for p in out.parent.iterdir()] == ["debian.parquet"]  # no temp file left

    # A rerun downloads and unpacks nothing again.
    calls.clear()
    assert run(cfg, LangsConfig(pool=("deu_Latn", "fra_Latn"))) == metrics
    assert calls == []


def test_min_languages(debs, tmp_path):
    pins, _ = debs
    roots = fetch(pins, tmp_path / "work")
    assert list(roots) == ["editor", "libreoffice-l10n"]
    for least, english in [(1, [E1, E6, E5]), (3, [E1, E5]), (5, [E1]), (8, [])]:
        table, _ = read_sentences(roots, _cfg(tmp_path, pins, min_languages=least))
        assert table.eng_Latn.tolist() == english, least


def test_a_domain_in_two_packages_is_an_error(debs, tmp_path):
    pins, _ = debs
    roots = fetch(pins[:1], tmp_path / "work")
    with pytest.raises(ValueError, match="packages editor and copy both ship the gettext domain"):
        read_sentences({**roots, "copy": roots["editor"]}, _cfg(tmp_path, pins))


def test_a_failing_download_names_the_package_and_version(debs, tmp_path, monkeypatch):
    pins, _ = debs
    cfg = _cfg(tmp_path, (*pins, "missing=1.0-1"))
    with pytest.raises(RuntimeError, match=r"apt-get download missing=1\.0-1 failed \(E: "
                                           r"Version '1\.0-1' for 'missing' was not found\)"):
        run(cfg, LangsConfig())
    assert not Path(cfg.output).exists()

    def no_apt(cmd, **_):
        raise FileNotFoundError(2, "No such file or directory", cmd[0])

    monkeypatch.setattr(deb.subprocess, "run", no_apt)
    with pytest.raises(RuntimeError, match=r"apt-get download missing=1\.0-1 failed "
                                           r"\(\[Errno 2\] No such file or directory"):
        run(cfg, LangsConfig())


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\['coreutils'\] are not name=version pins"):
        run(_cfg(tmp_path, ("coreutils",)), LangsConfig())
    cfg = dataclasses.replace(_cfg(tmp_path, ()), languages=("deu_Latn",))
    with pytest.raises(ValueError, match=r"lacks \['fra_Latn'.* of langs.pool"):
        run(cfg, LangsConfig())


def test_committed_debian_table():
    """The frozen extract_debian output in git."""
    cfg = ExtractDebianConfig()
    got = pq.read_table(cfg.output).to_pandas()
    codes = sorted(cfg.languages)
    assert list(got.columns) == ["id", "domain", "package", "eng_Latn", *codes]
    assert got.id.is_unique and got.eng_Latn.is_unique
    assert (got[codes].notna().sum(axis=1) >= cfg.min_languages).all()
    assert not got.eng_Latn.str.contains(r"%|\n|<").any()
    assert len(got) > 10_000
