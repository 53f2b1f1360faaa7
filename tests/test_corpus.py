import dataclasses
import json
import unicodedata
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import langs
from pipeline.config import LangsConfig
from pipeline.corpus import build_corpus, filters, langid
from pipeline.corpus.build_corpus import BuildCorpusConfig
from pipeline.corpus.split import assign_split, balanced_draw, sample_enx
from pipeline.io import read_json, read_table, write_table
from stages import build_corpus as stage

CFG = BuildCorpusConfig()


def limits(cfg: BuildCorpusConfig) -> dict[str, float]:
    """The filter thresholds of ``cfg``, as keyword arguments of the filters."""
    return {k: getattr(cfg, k) for k in ("max_repeat", "max_copy_ratio", "min_script_fraction",
                                         "min_length_ratio", "max_length_ratio")}


LIMITS = limits(CFG)

EN_GEN = "In the beginning God created the heavens and the earth."
EN_JOHN = (
    "For God so loved the world, that he gave his one and only Son, that whoever believes "
    "in him should not perish, but have eternal life."
)
KO_GEN = "태초에 하나님이 천지를 창조하시니라"
KO_JOHN = (
    "하나님이 세상을 이처럼 사랑하사 독생자를 주셨으니 이는 저를 믿는 자마다 멸망치 않고 "
    "영생을 얻게 하려 하심이니라"
)
ZH_GEN = "起初， 神创造天地。 "
RU_GEN = "В начале сотворил Бог небо и землю."
DE_GEN = "Im Anfang schuf Gott die Himmel und die Erde."


# ---------------------------------------------------------------- script


@pytest.mark.parametrize(("text", "script", "expected"), [
    ("Hello world", "Latn", 1.0),
    ("Grüße aus Köln, ça va? Añejo", "Latn", 1.0),
    ("ＡＢＣ", "Latn", 1.0),  # fullwidth Latin
    (RU_GEN, "Cyrl", 1.0),
    (RU_GEN, "Latn", 0.0),
    ("Hello мир", "Latn", 5 / 8),
    ("في البدء خلق الله السموات والارض.", "Arab", 1.0),
    (KO_GEN, "Hang", 1.0),
    (ZH_GEN, "Hans", 1.0),
    ("初めに、神が天と地を創造した。", "Jpan", 1.0),
    ("ｶﾀｶﾅ ラーメン", "Jpan", 1.0),  # halfwidth katakana, prolonged sound mark
    ("日本語のテキスト", "Hans", 3 / 8),  # kana are not Chinese
    ("नमस्ते दुनिया", "Deva", 1.0),  # vowel signs are marks, not letters
    ("আমার সোনার বাংলা", "Beng", 1.0),
    ("Καλημέρα κόσμε", "Grek", 1.0),
    ("שלום עולם", "Hebr", 1.0),
    ("สวัสดีชาวโลก", "Thai", 1.0),
    ("3:16 — 42!", "Cyrl", 1.0),  # no letters: nothing contradicts the script
])
def test_script_fraction(text, script, expected):
    assert langs.script_fraction(text, script) == pytest.approx(expected)


@pytest.mark.parametrize(("first", "last", "script"), [
    (0x0410, 0x044F, "Cyrl"),  # А..я
    (0x0621, 0x064A, "Arab"),
    (0x1100, 0x1112, "Hang"),  # conjoining jamo
    (0xAC00, 0xD7A3, "Hang"),  # all precomposed syllables
    (0x4E00, 0x9FFF, "Hani"),
    (0x3041, 0x3096, "Hira"),
    (0x30A1, 0x30FA, "Kana"),
    (0x0905, 0x0939, "Deva"),
    (0x05D0, 0x05EA, "Hebr"),
    (0x0100, 0x024F, "Latn"),  # Latin Extended-A/B
])
def test_char_script_matches_unicode_blocks(first, last, script):
    letters = [chr(c) for c in range(first, last + 1) if unicodedata.category(chr(c))[0] == "L"]
    assert letters and {langs.char_script(ch) for ch in letters} == {script}


def test_unknown_script_is_rejected():
    with pytest.raises(ValueError, match="no script filter for script 'Tibt'; supported: Arab"):
        langs.script_fraction("text", "Tibt")


# ---------------------------------------------------------------- repetition


def _max_repeat_brute_force(tokens, max_n=4):
    best = 1 if tokens else 0
    for n in range(1, max_n + 1):
        for i in range(len(tokens)):
            k = 1
            while tokens[i + k * n: i + (k + 1) * n] == tokens[i: i + n] and \
                    i + (k + 1) * n <= len(tokens):
                k += 1
            best = max(best, k)
    return best


def test_max_repeat_run_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(300):
        tokens = list(rng.choice(list("abc"), size=int(rng.integers(0, 25))))
        assert filters.max_repeat_run(tokens) == _max_repeat_brute_force(tokens), tokens


@pytest.mark.parametrize(("tokens", "expected"), [
    ([], 0),
    (["a"], 1),
    (["a", "b", "c"], 1),
    ("a b a b a b".split(), 3),
    ("x a b c d a b c d a b c d y".split(), 3),
    ("a b c d e a b c d e".split(), 1),  # a 5-gram is beyond n <= 4
])
def test_max_repeat_run_examples(tokens, expected):
    assert filters.max_repeat_run(tokens) == expected


def test_repetition_loop_is_dropped():
    src = "And he said to them: go and see the land of promise."
    loop = "Und er sagte zu ihnen: geht und seht das Land, das Land, das Land, das Land, das Land"
    assert filters.failures(loop, src, "deu_Latn", **LIMITS)[0] == "repeat"
    ok = "Und er sagte zu ihnen: das Land, das Land, das Land, das Land."  # 4 times: allowed
    assert "repeat" not in filters.failures(ok, src, "deu_Latn", **LIMITS)


def test_repetition_in_unspaced_scripts_counts_characters_not_punctuation():
    src = "They loved him and he loved them."
    assert "repeat" in filters.failures("他们爱他爱他爱他爱他爱他爱他", src, "zho_Hans", **LIMITS)
    assert "repeat" not in filters.failures("他们爱他......他也爱他们。", src, "zho_Hans", **LIMITS)


# ---------------------------------------------------------------- copy, length, all


def test_copied_source_is_dropped():
    assert filters.copy_ratio(EN_GEN, EN_GEN) == 1.0
    assert filters.copy_ratio(DE_GEN, EN_GEN) == 0.0
    assert filters.copy_ratio("Amen.", "Amen.") == 0.0  # one word: no bigrams to judge
    assert filters.failures(EN_GEN, EN_GEN, "deu_Latn", **LIMITS) == ["copy"]
    # Into Russian a copy also has the wrong script; "copy" is reported first.
    assert filters.failures(EN_GEN, EN_GEN, "rus_Cyrl", **LIMITS) == ["copy", "script"]


def test_wrong_script_is_dropped():
    assert filters.failures(RU_GEN, EN_GEN, "kor_Hang", **LIMITS) == ["script"]
    assert filters.failures(RU_GEN, EN_GEN, "rus_Cyrl", **LIMITS) == []


FR_GEN = "Au commencement, Dieu créa les cieux et la terre."
ES_GEN = "En el principio creó Dios los cielos y la tierra."
EN_LOVE = "For God so loved the world, that he gave his one and only Son."


def test_wrong_language_in_the_right_script_is_dropped():
    detector = langid.detector("pool", ("eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn"))
    # French where Spanish was asked for: Latin script, a plausible length, no copy.
    assert filters.failures(FR_GEN, EN_GEN, "spa_Latn", detector, **LIMITS) == ["language"]
    assert filters.failures(ES_GEN, EN_GEN, "spa_Latn", detector, **LIMITS) == []
    assert filters.failures(DE_GEN, EN_GEN, "deu_Latn", detector, **LIMITS) == []
    # English left untranslated (no bigram shared with this source, so not a "copy").
    assert filters.failures(EN_LOVE, EN_GEN, "fra_Latn", detector, **LIMITS) == ["language"]
    # Without a detector the filter is off.
    assert filters.failures(FR_GEN, EN_GEN, "spa_Latn", **LIMITS) == []
    assert langid.wrong_language([FR_GEN, ES_GEN, "1:1 ..."], "spa_Latn", detector).tolist() \
        == [True, False, False]


def test_language_filter_modes_and_unknown_languages():
    assert langid.detector("none", ("eng_Latn", "deu_Latn")) is None
    with pytest.raises(ValueError, match="language_id must be one of pool, all, none"):
        langid.detector("fast", ("eng_Latn",))
    with pytest.raises(ValueError, match=r"language_id_margin must be in \[0, 1\), got 1.5"):
        langid.detector("pool", ("eng_Latn",), 1.5)
    with pytest.raises(ValueError, match="no model for glg_Latn; set build_corpus.language_id"):
        langid.detector("pool", ("eng_Latn", "glg_Latn"))
    # Codes lingua files elsewhere: Standard Arabic under "ar", Traditional Chinese by ISO 639-3.
    assert langid.lingua_language("arb_Arab").name == "ARABIC"
    assert langid.lingua_language("zho_Hant").name == "CHINESE"


def test_korean_and_chinese_pass_the_length_ratio_thanks_to_the_script_factor():
    assert filters.failures(KO_JOHN, EN_JOHN, "kor_Hang", **LIMITS) == []
    assert filters.failures(ZH_GEN, EN_GEN, "zho_Hans", **LIMITS) == []
    # Without the factor, the Chinese verse would be "too short".
    assert filters.length_ratio(ZH_GEN, EN_GEN, "Latn") < CFG.min_length_ratio
    strict = dataclasses.replace(CFG, min_length_ratio=0.5)
    assert filters.failures(KO_GEN, EN_GEN, "kor_Hang", **limits(strict)) == []
    assert filters.length_ratio(KO_GEN, EN_GEN, "Latn") < 0.5
    assert filters.length_ratio(KO_GEN, EN_GEN, "Hang") == pytest.approx(
        len(KO_GEN) / (len(EN_GEN) * 0.45))


def test_length_ratio_bounds():
    assert filters.failures("Im Anfang.", EN_JOHN, "deu_Latn", **LIMITS) == ["too_short"]
    long = " ".join(f"Wort{i}" for i in range(60))
    assert filters.failures(long, EN_GEN, "deu_Latn", **LIMITS) == ["too_long"]


@pytest.mark.parametrize("text", [None, "", "  \n"])
def test_empty_output_is_only_empty(text):
    assert filters.failures(text, EN_GEN, "deu_Latn", **LIMITS) == ["empty"]


# ---------------------------------------------------------------- split and En-X


def test_split_is_deterministic_stable_and_seeded():
    ids = [f"v{i}" for i in range(2000)]
    a = assign_split(ids, 0.1, seed=13)
    assert a == assign_split(ids, 0.1, seed=13)
    assert 0.07 < a.count("dev") / len(ids) < 0.13
    # Adding rows (in any order) does not move existing ones.
    more = [f"w{i}" for i in range(500)] + ids[::-1]
    assert assign_split(more, 0.1, seed=13)[500:] == a[::-1]
    assert assign_split(ids, 0.1, seed=14) != a
    assert set(assign_split(ids, 0.0, seed=13)) == {"train"}


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match=r"dev_fraction must be in \[0, 1\), got 1.0"):
        assign_split(["a"], 1.0, seed=0)


def test_balanced_draw():
    pool = ["deu_Latn", "fra_Latn", "kor_Hang"]
    for n in (0, 1, 2, 7, 100):
        drawn = balanced_draw(n, pool, np.random.default_rng(3))
        counts = Counter(drawn)
        assert len(drawn) == n
        assert max(counts.values(), default=0) - min(counts.get(p, 0) for p in pool) <= 1
    assert balanced_draw(30, pool, np.random.default_rng(3)) == \
        balanced_draw(30, pool, np.random.default_rng(3))
    assert balanced_draw(30, pool, np.random.default_rng(3)) != \
        balanced_draw(30, pool, np.random.default_rng(4))


def test_enx_has_same_size_and_balanced_languages():
    pool = ("deu_Latn", "rus_Cyrl", "kor_Hang", "arb_Arab")
    n = 103
    corpus = pd.DataFrame({
        "id": [f"r{i}" for i in range(n)],
        "split": ["dev" if i % 10 == 0 else "train" for i in range(n)],
        "eng_Latn": [f"en {i}" for i in range(n)],
        **{lang: [f"{lang} {i}" for i in range(n)] for lang in pool},
    })
    enx = sample_enx(corpus, "eng_Latn", pool, seed=5)
    assert list(enx.columns) == ["id", "split", "lang", "eng_Latn", "x"]
    assert len(enx) == n
    assert enx["id"].tolist() == corpus["id"].tolist()
    assert enx["split"].tolist() == corpus["split"].tolist()
    assert enx["eng_Latn"].tolist() == corpus["eng_Latn"].tolist()
    assert enx["x"].tolist() == [f"{lang} {i}" for i, lang in enumerate(enx["lang"])]
    for split in ("train", "dev"):
        counts = Counter(enx.loc[enx["split"] == split, "lang"])
        assert set(counts) == set(pool) and max(counts.values()) - min(counts.values()) <= 1
    assert sample_enx(corpus, "eng_Latn", pool, seed=5).equals(enx)
    assert not sample_enx(corpus, "eng_Latn", pool, seed=6)["lang"].equals(enx["lang"])


# ---------------------------------------------------------------- join, drop counts, outputs

POOL = ("deu_Latn", "rus_Cyrl", "kor_Hang")
N = 40
EN = [f"Sentence number {i} tells how the shepherd walked to the river at dawn." for i in range(N)]
GOOD = {
    "deu_Latn": [f"Satz Nummer {i} erzählt, wie der Hirte im Morgengrauen zum Fluss ging."
                 for i in range(N)],
    "rus_Cyrl": [f"Предложение номер {i} рассказывает, как пастух пошёл к реке на рассвете."
                 for i in range(N)],
    "kor_Hang": [f"문장 {i}번은 목자가 새벽에 강으로 걸어간 이야기를 들려준다." for i in range(N)],
}
# Row index -> {language: bad translation}; expected first reason and per-language failures.
BAD = {
    1: {"deu_Latn": None},  # a null in the Parquet file
    2: {"rus_Cyrl": EN[2]},  # copy + script
    3: {"kor_Hang": "목자 목자 목자 목자 목자 목자 목자 목자 목자 목자"},  # repeat
    4: {"deu_Latn": GOOD["rus_Cyrl"][4]},  # script
    5: {"deu_Latn": " ".join(["Hirte", "Fluss", "Morgen", "Wasser", "Stein"] * 20),  # too_long
        "kor_Hang": "   "},  # empty (comes first in REASONS order)
    6: {"rus_Cyrl": "Пастух."},  # too_short
    # English left in the German column (Latin script, no bigram of the source): language
    7: {"deu_Latn": "A herdsman went down toward the stream early one morning, line seven says."},
}


def _write_inputs(root, order_seed=0, refs_langs=POOL):
    src = pd.DataFrame({"id": [f"s{i:03d}" for i in range(N)], "eng_Latn": EN})
    write_table(src, root / "source.parquet")
    rng = np.random.default_rng(order_seed)
    for lang in POOL:
        texts = [BAD.get(i, {}).get(lang, GOOD[lang][i]) for i in range(N)]
        perm = rng.permutation(N)  # translation files need not follow the source order
        df = pd.DataFrame({"id": src["id"].to_numpy()[perm], lang: np.array(texts)[perm]})
        write_table(df, root / "translated" / f"{lang}.parquet")
    refs = src.assign(**{lang: [f"human {lang} {i}" for i in range(N)] for lang in refs_langs},
                      fra_Latn="unused")
    refs.loc[10, refs_langs[0]] = ""  # an empty reference: row left out of the human corpus
    write_table(refs.sample(frac=1, random_state=0), root / "refs.parquet")
    # Second editions of English and German: German replaces the first's in the human corpus.
    second = pd.DataFrame({"id": src["id"], "eng_Latn": [f"second eng {i}" for i in range(N)],
                           "rus_Cyrl": [f"second rus {i}" for i in range(N)]})
    second.loc[12, "eng_Latn"] = " "  # left out of the English corpus only
    write_table(second.drop(index=[14]), root / "second.parquet")
    return BuildCorpusConfig(
        source=str(root / "source.parquet"), translated_dir=str(root / "translated"),
        references=str(root / "refs.parquet"), second_editions=str(root / "second.parquet"),
        dev_fraction=0.25, seed=7, output_dir=str(root / "corpus"),
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    cfg = _write_inputs(root)
    metrics = build_corpus.run(cfg, LangsConfig(pool=POOL))
    return cfg, metrics, root / "corpus"


def test_join_and_drop_counts(built):
    cfg, metrics, out = built
    stats = read_json(out / "stats.json")
    assert stats["dropped_by_reason"] == {
        "empty": 2, "repeat": 1, "copy": 1, "script": 1, "language": 1, "too_short": 1,
        "too_long": 0}
    assert stats["dropped_by_lang"] == {"deu_Latn": 4, "rus_Cyrl": 2, "kor_Hang": 2}
    assert stats["failures"] == {
        # The Russian and English texts of rows 4 and 2 fail "language" too.
        "deu_Latn": {"empty": 1, "repeat": 0, "copy": 0, "script": 1, "language": 2,
                     "too_short": 0, "too_long": 1},
        "rus_Cyrl": {"empty": 0, "repeat": 0, "copy": 1, "script": 1, "language": 1,
                     "too_short": 1, "too_long": 0},
        "kor_Hang": {"empty": 1, "repeat": 1, "copy": 0, "script": 0, "language": 0,
                     "too_short": 0, "too_long": 0},
    }
    kept = [i for i in range(N) if i not in BAD]
    multiway = read_table(out / "multiway.parquet")
    assert list(multiway.columns) == ["id", "split", "eng_Latn", *POOL]
    assert multiway["id"].tolist() == [f"s{i:03d}" for i in kept]
    assert multiway["eng_Latn"].tolist() == [EN[i] for i in kept]
    for lang in POOL:  # aligned by id although the files were shuffled
        assert multiway[lang].tolist() == [GOOD[lang][i] for i in kept]
    assert multiway["split"].tolist() == assign_split(multiway["id"], 0.25, 7)
    assert set(multiway["split"]) == {"train", "dev"}
    assert metrics == {
        "rows_in": N, "rows_out": len(kept),
        "rows_train": int((multiway["split"] == "train").sum()),
        "rows_dev": int((multiway["split"] == "dev").sum()),
        "dropped": 7, "dropped_empty": 2, "dropped_repeat": 1, "dropped_copy": 1,
        "dropped_script": 1, "dropped_language": 1, "dropped_too_short": 1,
        "dropped_too_long": 0, "dropped_deu_Latn": 4, "dropped_rus_Cyrl": 2,
        "dropped_kor_Hang": 2,
        "enx_rows": len(kept), "human_rows": len(kept) - 2, "english_rows": len(kept) - 2,
    }
    assert stats["rows"] == {"in": N, "out": len(kept), "train": metrics["rows_train"],
                             "dev": metrics["rows_dev"], "enx": len(kept), "human": len(kept) - 2,
                             "english": len(kept) - 2}
    assert stats["mean_chars"]["kor_Hang"] == pytest.approx(
        np.mean([len(GOOD["kor_Hang"][i]) for i in kept]))
    assert json.loads((out / "meta.json").read_text())["config"]["seed"] == 7


def test_enx_and_human_outputs(built):
    _, _, out = built
    multiway = read_table(out / "multiway.parquet")
    enx = read_table(out / "enx.parquet")
    assert list(enx.columns) == ["id", "split", "lang", "eng_Latn", "x"]
    assert enx[["id", "split", "eng_Latn"]].equals(multiway[["id", "split", "eng_Latn"]])
    for row, lang, x in zip(multiway.itertuples(index=False), enx["lang"], enx["x"], strict=True):
        assert x == getattr(row, lang)
    counts = Counter(enx["lang"])
    assert set(counts) == set(POOL) and max(counts.values()) - min(counts.values()) <= 2

    # Rows 10 (empty first-edition German) and 14 (no second edition) lack a reference.
    human = read_table(out / "human.parquet")
    assert list(human.columns) == ["id", "split", "eng_Latn", *POOL]
    expected = multiway[~multiway["id"].isin(["s010", "s014"])].reset_index(drop=True)
    assert human[["id", "split", "eng_Latn"]].equals(expected[["id", "split", "eng_Latn"]])
    assert human["kor_Hang"].tolist() == [f"human kor_Hang {int(i[1:])}" for i in human["id"]]
    assert human["rus_Cyrl"].tolist() == [f"second rus {int(i[1:])}" for i in human["id"]]

    english = read_table(out / "english.parquet")
    assert list(english.columns) == ["id", "split", "eng_Latn", "eng_Latn_second"]
    expected = multiway[~multiway["id"].isin(["s012", "s014"])].reset_index(drop=True)
    assert english[["id", "split", "eng_Latn"]].equals(expected[["id", "split", "eng_Latn"]])
    assert english["eng_Latn_second"].tolist() == [f"second eng {int(i[1:])}"
                                                   for i in english["id"]]


def test_split_does_not_depend_on_which_rows_survive(built, tmp_path):
    cfg, _, out = built
    before = read_table(out / "multiway.parquet").set_index("id")["split"]
    loose = dataclasses.replace(cfg, min_length_ratio=0.0, output_dir=str(tmp_path))
    build_corpus.run(loose, LangsConfig(pool=POOL))
    after = read_table(tmp_path / "multiway.parquet").set_index("id")["split"]
    assert len(after) > len(before)
    assert after[before.index].equals(before)


def test_no_human_corpus_when_references_lack_a_pool_language(tmp_path):
    cfg = _write_inputs(tmp_path, refs_langs=("deu_Latn", "rus_Cyrl"))
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "human.parquet").write_text("stale")
    metrics = build_corpus.run(cfg, LangsConfig(pool=POOL))
    assert metrics["human_rows"] == 0
    assert not (tmp_path / "corpus" / "human.parquet").exists()
    assert metrics["english_rows"] > 0  # the second editions still make the English corpus
    (tmp_path / "corpus" / "english.parquet").write_text("stale")
    no_refs = build_corpus.run(dataclasses.replace(cfg, references=None, second_editions=None),
                               LangsConfig(pool=POOL))
    assert no_refs["english_rows"] == 0
    assert not (tmp_path / "corpus" / "english.parquet").exists()
    assert no_refs["human_rows"] == 0 and no_refs["rows_out"] == metrics["rows_out"]


def test_missing_translation_file(tmp_path):
    cfg = _write_inputs(tmp_path)
    (tmp_path / "translated" / "kor_Hang.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"kor_Hang.parquet is missing; run "
                                                r"`dvc repro translate@kor_Hang`"):
        build_corpus.run(cfg, LangsConfig(pool=POOL))


def test_ids_not_matching_the_source(tmp_path):
    cfg = _write_inputs(tmp_path)
    path = tmp_path / "translated" / "rus_Cyrl.parquet"
    df = read_table(path)
    write_table(df.assign(id=df["id"].replace({"s005": "x999"})), path)
    with pytest.raises(ValueError, match=r"rus_Cyrl.parquet ids do not match the source: 1 source "
                                         r"id\(s\) missing \('s005'\), 1 unknown id\(s\) "
                                         r"\('x999'\)"):
        build_corpus.run(cfg, LangsConfig(pool=POOL))
    write_table(pd.concat([df, df.iloc[:1]]), path)
    with pytest.raises(ValueError, match="rus_Cyrl.parquet has 1 duplicated id"):
        build_corpus.run(cfg, LangsConfig(pool=POOL))


def test_zero_rows_left_names_the_worst_filter(tmp_path):
    cfg = _write_inputs(tmp_path)
    write_table(pd.DataFrame({"id": [f"s{i:03d}" for i in range(N)], "deu_Latn": GOOD["rus_Cyrl"]}),
                tmp_path / "translated" / "deu_Latn.parquet")
    with pytest.raises(ValueError, match=r"no rows left after filtering 40 rows: the 'script' "
                                         r"filter removed the most \(\d+ rows, mostly in "
                                         r"deu_Latn\); lower build_corpus.min_script_fraction"):
        build_corpus.run(cfg, LangsConfig(pool=POOL))


def test_source_language_in_pool_is_rejected(tmp_path):
    cfg = _write_inputs(tmp_path)
    with pytest.raises(ValueError, match="langs.pool contains the source language eng_Latn"):
        build_corpus.run(cfg, LangsConfig(pool=("eng_Latn", *POOL)))


# ---------------------------------------------------------------- stage entry


def _params(tmp_path, cfg):
    params = {
        "langs": {"source": "eng_Latn", "pool": list(POOL)},
        "build_corpus": dataclasses.asdict(cfg),
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_stage_main_end_to_end(tmp_path, monkeypatch):
    cfg = _write_inputs(tmp_path)
    params = _params(tmp_path, cfg)
    monkeypatch.chdir(tmp_path)  # metrics land in ./data/metrics
    assert stage.main(["--params", str(params)]) == 0
    metrics = read_json(tmp_path / "data" / "metrics" / "build_corpus.json")
    assert metrics["rows_in"] == N and metrics["rows_out"] == N - len(BAD)
    assert metrics["enx_rows"] == len(read_table(tmp_path / "corpus" / "enx.parquet"))
    # The same run through the library gives the same corpus.
    direct = build_corpus.run(dataclasses.replace(cfg, output_dir=str(tmp_path / "direct")),
                       LangsConfig(pool=POOL))
    assert direct == metrics
    for name in ("multiway", "enx", "human", "english"):
        assert read_table(tmp_path / "corpus" / f"{name}.parquet").equals(
            read_table(tmp_path / "direct" / f"{name}.parquet"))


def test_stage_main_missing_translation_is_one_line_error(tmp_path, monkeypatch, capsys):
    cfg = _write_inputs(tmp_path)
    (tmp_path / "translated" / "deu_Latn.parquet").unlink()
    params = _params(tmp_path, cfg)
    monkeypatch.chdir(tmp_path)
    assert stage.main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [f"error: translation file {tmp_path}/translated/deu_Latn.parquet is "
                     "missing; run `dvc repro translate@deu_Latn`"]
    assert "Traceback" not in err


def test_filter_rows_keeps_a_clean_row():
    src = pd.DataFrame({"id": ["a", "b"], "eng_Latn": [EN_GEN, EN_JOHN]})
    keep, stats = filters.filter_rows(
        src, {"kor_Hang": pd.Series([KO_GEN, RU_GEN])}, "eng_Latn", language_id=CFG.language_id,
        language_id_margin=CFG.language_id_margin, **LIMITS)
    assert keep.tolist() == [True, False]
    assert stats["dropped_by_reason"] == {**dict.fromkeys(filters.REASONS, 0), "script": 1}
    assert stats["dropped_by_lang"] == {"kor_Hang": 1}


# ---------------------------------------------------------------- streaming vs in memory


def test_failure_matrix_equals_failures_row_by_row():
    import pyarrow as pa

    src = [EN_GEN, EN_JOHN, "", EN_GEN, EN_GEN, EN_JOHN, "   ", EN_GEN, EN_GEN, None, EN_GEN]
    texts = [
        DE_GEN, EN_JOHN, "Hallo", None, "", "\x1c\u0085 \u3000", "Wort " * 80,
        "\u200bIm\ufeff Anfang\u200b", RU_GEN, "Im Anfang.", "Im Anfang Im Anfang Im Anfang"
        " Im Anfang Im Anfang schuf Gott die Himmel.",
    ]
    detector = langid.detector("pool", ("eng_Latn", "deu_Latn", "rus_Cyrl", "zho_Hans"))
    for lang in ("deu_Latn", "rus_Cyrl", "zho_Hans"):
        got = filters.failure_matrix(pa.array(texts), pa.array(src), lang, detector=detector,
                                     **LIMITS)
        for i, (text, sent) in enumerate(zip(texts, src, strict=True)):
            want = filters.failures(text, sent or "", lang, detector, **LIMITS)
            assert [r for k, r in enumerate(filters.REASONS) if got[k, i]] == want, (lang, i)


def _reference_build(cfg, pool):
    """The corpus as the in-memory build made it: pandas join, failures() row by row."""
    src = read_table(cfg.source, ["id", "eng_Latn"])
    src["eng_Latn"] = src["eng_Latn"].fillna("")
    texts = {lang: read_table(f"{cfg.translated_dir}/{lang}.parquet").set_index("id")[lang]
             .reindex(src["id"].to_numpy()).fillna("").tolist() for lang in pool}
    fails = np.zeros((len(filters.REASONS), len(src)), dtype=bool)
    failures = {lang: dict.fromkeys(filters.REASONS, 0) for lang in pool}
    by_lang = dict.fromkeys(pool, 0)
    detector = langid.detector(cfg.language_id, ("eng_Latn", *pool), cfg.language_id_margin)
    for lang in pool:
        for i, (text, sent) in enumerate(zip(texts[lang], src["eng_Latn"], strict=True)):
            failed = filters.failures(text, sent, lang, detector, **limits(cfg))
            by_lang[lang] += bool(failed)
            for reason in failed:
                failures[lang][reason] += 1
                fails[filters.REASONS.index(reason), i] = True
    keep = ~fails.any(axis=0)
    first = fails.argmax(axis=0)[~keep]
    multiway = pd.DataFrame({
        "id": src["id"][keep].to_numpy(),
        "split": np.array(assign_split(src["id"], cfg.dev_fraction, cfg.seed))[keep],
        "eng_Latn": src["eng_Latn"][keep].to_numpy(),
        **{lang: np.array(texts[lang], dtype=object)[keep] for lang in pool},
    })
    enx = sample_enx(multiway, "eng_Latn", pool, cfg.seed)
    second = read_table(cfg.second_editions)
    refs = read_table(cfg.references)[["id", *(c for c in pool if c not in second)]]
    refs = refs.merge(second[["id", *(c for c in pool if c in second)]], on="id", how="inner")
    human = multiway[["id", "split", "eng_Latn"]].merge(refs[["id", *pool]], on="id", how="inner")
    human = human[human[list(pool)].fillna("").apply(lambda c: c.str.strip() != "").all(axis=1)]
    english = multiway[["id", "split", "eng_Latn"]].merge(
        second[["id", "eng_Latn"]].rename(columns={"eng_Latn": "eng_Latn_second"}), on="id")
    english = english[english["eng_Latn_second"].fillna("").str.strip() != ""]
    stats = {
        "dropped_by_reason": {r: int((first == k).sum()) for k, r in enumerate(filters.REASONS)},
        "dropped_by_lang": by_lang, "failures": failures,
        "mean_chars": {c: float(multiway[c].str.len().mean()) for c in ("eng_Latn", *pool)},
        "enx_langs": {lang: int((enx["lang"] == lang).sum()) for lang in pool},
    }
    return {"multiway": multiway, "enx": enx, "human": human.reset_index(drop=True),
            "english": english.reset_index(drop=True)}, stats


def _mixed_inputs(root, n=300):
    """Rows failing every filter first (and in combinations), a shuffled and an aligned
    translation file, a null translation, references partly missing, empty or shuffled."""
    rng = np.random.default_rng(1)
    ids = [f"v{i:04d}" for i in range(n)]
    en = [f"{EN_JOHN[: 40 + i % 60]} {i}" for i in range(n)]
    good = {"deu_Latn": [f"{DE_GEN} Vers {i} und mehr Worte hier." for i in range(n)],
            "kor_Hang": [f"{KO_JOHN[: 20 + i % 30]} {i}" for i in range(n)]}
    bad = {
        "empty": lambda i, lang: rng.choice([None, "", " \t"]),
        "repeat": lambda i, lang: " ".join([good[lang][i].split()[0]] * 9),
        "copy": lambda i, lang: en[i],
        "script": lambda i, lang: RU_GEN * 2,
        "language": lambda i, lang: f"Then a shepherd walked down to the river at dawn, verse {i}.",
        "too_short": lambda i, lang: good[lang][i][:3],
        "too_long": lambda i, lang: " ".join(f"W{k}" for k in range(120)),
    }
    texts = {lang: list(good[lang]) for lang in good}
    for i in range(n):
        for lang in good:
            if rng.random() < 0.12:
                texts[lang][i] = bad[rng.choice(list(bad))](i, lang)
    write_table(pd.DataFrame({"id": ids, "eng_Latn": en}), root / "source.parquet")
    for lang, order in (("deu_Latn", rng.permutation(n)), ("kor_Hang", np.arange(n))):
        write_table(pd.DataFrame({"id": np.array(ids)[order], lang: np.array(texts[lang])[order]}),
                    root / "translated" / f"{lang}.parquet")
    refs = pd.DataFrame({"id": ids + ["extra"], **{
        lang: [f"human {lang} {i}" if i % 17 else " " for i in range(n + 1)] for lang in good}})
    write_table(refs.drop(index=[5, 50]).sample(frac=1, random_state=2), root / "refs.parquet")
    second = pd.DataFrame({"id": ids, "eng_Latn": [f"second {i}" if i % 13 else "" for i in
                                                   range(n)],
                           "kor_Hang": [f"second kor {i}" if i % 19 else None for i in range(n)]})
    write_table(second.drop(index=[7, 70]).sample(frac=1, random_state=3), root / "second.parquet")
    return BuildCorpusConfig(
        source=str(root / "source.parquet"), translated_dir=str(root / "translated"),
        references=str(root / "refs.parquet"), second_editions=str(root / "second.parquet"),
        dev_fraction=0.2, seed=3, output_dir=str(root / "corpus")), tuple(good)


@pytest.mark.parametrize("small", [False, True])
def test_streamed_build_equals_in_memory_reference(tmp_path, monkeypatch, small):
    from pipeline.corpus import stream

    cfg, pool = _mixed_inputs(tmp_path)
    if small:  # many batches, row groups and reorder buckets
        monkeypatch.setattr(stream, "BATCH_ROWS", 7)
        monkeypatch.setattr(stream, "ROW_GROUP_ROWS", 50)
        monkeypatch.setattr(stream, "BUCKET_ROWS", 32)
    metrics = build_corpus.run(cfg, LangsConfig(pool=pool))
    tables, want = _reference_build(cfg, pool)
    stats = read_json(tmp_path / "corpus" / "stats.json")
    for key, value in want.items():
        assert stats[key] == value, key
    assert all(want["dropped_by_reason"][r] > 0 for r in filters.REASONS)
    assert metrics["human_rows"] == len(tables["human"]) < metrics["rows_out"]
    for name, table in tables.items():
        path = tmp_path / "corpus" / f"{name}.parquet"
        assert read_table(path).equals(table), name
        if not small:  # one row group: the very bytes the in-memory build wrote
            write_table(table, tmp_path / f"{name}.parquet")
            assert path.read_bytes() == (tmp_path / f"{name}.parquet").read_bytes(), name


def test_duplicated_source_id(tmp_path):
    cfg = _write_inputs(tmp_path)
    src = read_table(cfg.source)
    write_table(pd.concat([src, src.iloc[[3, 3, 7]]]), cfg.source)
    with pytest.raises(ValueError, match=r"source.parquet has 3 duplicated id\(s\) \('s003', "
                                         r"'s007'\); ids must be unique"):
        build_corpus.run(cfg, LangsConfig(pool=POOL))
