"""Translation speed and memory: the pipeline vs raw CTranslate2 vs HF transformers.

In one run, on the same model and the same English sentences, all on CPU with the same
number of threads, greedy search and the same maximum output length:

(a) the pipeline's ``translate`` stage function (``pipeline.translate.translate.run``),
(b) raw ``ctranslate2.Translator.translate_iterable`` on pre-tokenised input,
(c) Hugging Face ``MarianMTModel.generate`` (fp32, length-sorted batches),

reported as target tokens per second (tokens actually produced, without EOS/padding:
random weights decode gibberish of any length); the three alternate ``--repeats`` times
and each reports its fastest run (the least disturbed on a shared machine) and median.
Then the stage's peak RSS for N and 10×N sentences, each size in a fresh subprocess
(``resource.getrusage``'s ``ru_maxrss``, cross-checked with ``VmHWM``). Linux carries a
parent's resident size into a forked child's ``ru_maxrss``, so the children are started
before this process loads torch, and the model is built in a subprocess too.

Model: ``data/work/train_nmt/hf_model`` and its CT2 export when ``train_nmt`` has run;
otherwise a random-init Marian with the trainer's default architecture (d_model 256, 4
encoder / 3 decoder layers, 4 heads, FFN 1024, vocabulary 16000), converted to int8 by the
pipeline. Sentences: English Bible verses from ``data/seed/bible_source.parquet`` if it
exists, else generated lines.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/translate.py [--threads 1]

Prints a table and writes ``benchmarks/results/translate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _shared import BIBLE, RESULTS_DIR, ROOT, bible_or_generated

HF_MODEL = ROOT / "data/work/train_nmt/hf_model"
TRAINER_SPM = ROOT / "data/work/train_nmt/spm.model"
RESULTS = RESULTS_DIR / "translate.json"
LANG = "deu_Latn"
POOL = ("deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "arb_Arab", "kor_Hang")


def english_sentences(n: int, seed: int = 0) -> tuple[list[str], str]:
    """``n`` English sentences (Bible verses when available, cycled if needed)."""
    lines, verses = bible_or_generated(n, seed)
    return lines, f"Bible verses ({BIBLE.name})" if verses else "generated lines"


def build_random_marian(out: Path, sentences: list[str]) -> Path:
    """Random-init Marian with the trainer's default architecture and a 16000 vocabulary."""
    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    out.mkdir(parents=True, exist_ok=True)
    vocab_size = 16000
    tags = [f">>{c}<<" for c in POOL]
    if TRAINER_SPM.is_file():
        spm_path = TRAINER_SPM
    else:
        spm_path = out / "spm.model"
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_prefix=str(out / "spm"),
            vocab_size=8000, user_defined_symbols=tags, hard_vocab_limit=False,
            minloglevel=2, eos_id=0, unk_id=1, bos_id=-1, pad_id=-1,
        )
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    # Fill up to the trainer's vocabulary size so the output layer costs what it will.
    pieces += [f"<extra{i}>" for i in range(vocab_size - 1 - len(pieces))]
    vocab = {p: i for i, p in enumerate(pieces[: vocab_size - 1])}
    vocab["<pad>"] = vocab_size - 1
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    for name in ("source.spm", "target.spm"):
        (out / name).write_bytes(spm_path.read_bytes())
    config = MarianConfig(
        vocab_size=vocab_size, d_model=256, encoder_layers=4, decoder_layers=3,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=1024,
        decoder_ffn_dim=1024, max_position_embeddings=512, pad_token_id=vocab_size - 1,
        eos_token_id=vocab["</s>"], decoder_start_token_id=vocab_size - 1,
        forced_eos_token_id=vocab["</s>"], scale_embedding=True,
    )
    torch.manual_seed(0)
    MarianMTModel(config).save_pretrained(out)
    MarianTokenizer(str(out / "source.spm"), str(out / "target.spm"),
                    str(out / "vocab.json")).save_pretrained(out)
    return out


def prepare_model(work: Path, sentences: list[str]) -> tuple[Path, Path, str]:
    """(HF dir, CT2 dir, description)."""
    from pipeline.translate.convert_nmt import convert_hf_model
    from pipeline.translate.train_nmt import TrainNmtConfig

    extra = {"target_langs": list(POOL), "target_tag": ">>{code}<<"}
    if HF_MODEL.is_dir():
        ct2 = ROOT / TrainNmtConfig().output_dir
        if not (ct2 / "multiway_nmt.json").is_file():
            ct2 = convert_hf_model(HF_MODEL, work / "ct2", quantization="int8", extra_meta=extra)
        return HF_MODEL, ct2, f"trained model {HF_MODEL.relative_to(ROOT)}"
    hf = build_random_marian(work / "hf", sentences)
    ct2 = convert_hf_model(hf, work / "ct2", quantization="int8", extra_meta=extra)
    spm_from = "train_nmt's" if TRAINER_SPM.is_file() else "a fresh"
    return hf, ct2, ("random-init Marian (d256, 4+3 layers, 4 heads, ffn 1024, vocab 16000; "
                     f"{spm_from} sentencepiece model)")


def write_source(path: Path, sentences: list[str]) -> Path:
    import pandas as pd

    from pipeline.io import write_table

    write_table(pd.DataFrame({"id": [f"b{i:07d}" for i in range(len(sentences))],
                              "eng_Latn": sentences}), path)
    return path


# The stage's default repetition guard, applied by all three engines so they do the same work.
NO_REPEAT = 4


def stage_config(source: Path, ct2: Path, out: Path, args: argparse.Namespace, shard_size: int):
    from pipeline.translate.translate import TranslateConfig

    return TranslateConfig(
        source=str(source), model_dir=str(ct2), device="cpu", compute_type="int8", beam_size=1,
        max_batch_tokens=args.batch_tokens, max_decoding_length=args.max_length,
        inter_threads=1, intra_threads=args.threads, shard_size=shard_size, references=None,
        output_dir=str(out), no_repeat_ngram_size=NO_REPEAT,
    )


def bench_pipeline(source: Path, ct2: Path, work: Path, args) -> dict:
    import shutil

    from pipeline.config import LangsConfig
    from pipeline.translate import translate

    out = work / "pipeline"
    shutil.rmtree(out, ignore_errors=True)
    start, cpu = time.perf_counter(), time.process_time()
    cfg = stage_config(source, ct2, out, args, 1000)
    metrics = translate.run(cfg, LangsConfig(pool=POOL), LANG)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    work = metrics["runtime"]
    tokens = work["target_tokens"]
    # The stage's own clocks cover its translation loop (tokenise, translate, detokenise,
    # write shards); "whole_call" also covers model load, hashing and the final Parquet.
    return {"sentences": metrics["sentences"], "target_tokens": tokens,
            "seconds": work["translate_seconds"], "tokens_per_s": work["target_tokens_per_s"],
            "cpu_seconds": work["translate_cpu_seconds"],
            "cpu_tokens_per_s": round(tokens / work["translate_cpu_seconds"], 1),
            "whole_call_seconds": round(wall, 3),
            "whole_call_tokens_per_s": round(tokens / wall, 1),
            "whole_call_cpu_tokens_per_s": round(tokens / cpu, 1)}


def bench_raw_ct2(sentences: list[str], ct2: Path, args) -> dict:
    import ctranslate2
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(ct2 / "source.spm"))
    tokens = [[f">>{LANG}<<", *pieces, "</s>"] for pieces in sp.encode(sentences, out_type=str)]
    translator = ctranslate2.Translator(str(ct2), device="cpu", compute_type="int8",
                                        inter_threads=1, intra_threads=args.threads)
    start, cpu = time.perf_counter(), time.process_time()
    produced = sum(len(r.hypotheses[0]) for r in translator.translate_iterable(
        tokens, max_batch_size=args.batch_tokens, batch_type="tokens", beam_size=1,
        max_decoding_length=args.max_length, no_repeat_ngram_size=NO_REPEAT))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"sentences": len(tokens), "target_tokens": produced, "seconds": round(seconds, 3),
            "tokens_per_s": round(produced / seconds, 1), "cpu_seconds": round(cpu, 3),
            "cpu_tokens_per_s": round(produced / cpu, 1)}


def bench_hf(sentences: list[str], hf: Path, args) -> dict:
    import torch
    from transformers import AutoTokenizer, MarianMTModel

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(hf)
    model = MarianMTModel.from_pretrained(hf).eval()
    special = {model.config.pad_token_id, model.config.eos_token_id}
    texts = sorted((f">>{LANG}<< {s}" for s in sentences), key=len)  # fair: sorted batches
    produced, seconds, cpu = 0, 0.0, 0.0
    with torch.inference_mode():
        for i in range(0, len(texts), args.hf_batch):
            batch = tokenizer(texts[i:i + args.hf_batch], return_tensors="pt", padding=True)
            start, cpu_start = time.perf_counter(), time.process_time()
            out = model.generate(**batch, num_beams=1, do_sample=False,
                                 max_new_tokens=args.max_length,
                                 no_repeat_ngram_size=NO_REPEAT)
            seconds += time.perf_counter() - start
            cpu += time.process_time() - cpu_start
            for row in out[:, 1:].tolist():  # drop the decoder start token
                produced += next((k for k, t in enumerate(row) if t in special), len(row))
    return {"sentences": len(texts), "target_tokens": produced, "seconds": round(seconds, 3),
            "tokens_per_s": round(produced / seconds, 1), "cpu_seconds": round(cpu, 3),
            "cpu_tokens_per_s": round(produced / cpu, 1)}


def peak_rss_mb() -> dict:
    """Peak resident size of this process: ``ru_maxrss`` and ``VmHWM`` (MB)."""
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text()
               .splitlines() if line.startswith("VmHWM"))
    return {"maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "vmhwm_mb": round(hwm / 1024, 1)}


def rss_child(args) -> None:
    """Run the stage once in this (fresh) process and print its peak RSS."""
    from pipeline.config import LangsConfig
    from pipeline.translate import translate

    metrics = translate.run(stage_config(Path(args.rss_child), Path(args.ct2),
                                     Path(args.out_dir), args, args.shard_size),
                        LangsConfig(pool=POOL), LANG)
    print(json.dumps({**peak_rss_mb(), "sentences": metrics["sentences"],
                      "shards": metrics["shards"],
                      "seconds": metrics["runtime"]["translate_seconds"]}))


def run_child(*argv: str, threads: int) -> dict:
    """Run this script in a fresh process; return the JSON its last stdout line holds."""
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode:
        raise RuntimeError(f"child {argv[:2]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_rss(pool: list[str], ct2: Path, work: Path, args) -> dict:
    rows = {}
    for n in (args.rss_sentences, 10 * args.rss_sentences):
        source = write_source(work / f"rss_{n}.parquet", [pool[i % len(pool)] for i in range(n)])
        rows[n] = run_child(
            "--rss-child", str(source), "--ct2", str(ct2), "--out-dir", str(work / f"rss_{n}"),
            "--threads", str(args.threads), "--max-length", str(args.rss_max_length),
            "--batch-tokens", str(args.batch_tokens), "--shard-size", str(args.shard_size),
            threads=args.threads)
    small, large = rows.values()
    return {"sizes": rows, "ratio": round(large["maxrss_mb"] / small["maxrss_mb"], 3),
            "parent_rss_when_spawning_mb": peak_rss_mb()["vmhwm_mb"],
            "shard_size": args.shard_size, "max_length": args.rss_max_length}


def best_run(rows: list[dict]) -> dict:
    """The fastest run (least disturbed by other processes), with medians and all runs."""
    ranked = sorted(rows, key=lambda r: r["tokens_per_s"])
    cpu = sorted(r["cpu_tokens_per_s"] for r in rows)
    return {**ranked[-1], "median_tokens_per_s": ranked[len(ranked) // 2]["tokens_per_s"],
            "all_tokens_per_s": [r["tokens_per_s"] for r in rows],
            "best_cpu_tokens_per_s": cpu[-1], "median_cpu_tokens_per_s": cpu[len(cpu) // 2]}


def machine(args) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    import ctranslate2
    import torch
    import transformers

    return {"cpu": cpu, "cores": os.cpu_count(), "threads_used": args.threads,
            "python": platform.python_version(), "ctranslate2": ctranslate2.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sentences", type=int, default=500, help="for (a) and (b)")
    parser.add_argument("--hf-sentences", type=int, default=150, help="for (c)")
    parser.add_argument("--hf-batch", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--rss-sentences", type=int, default=200)
    parser.add_argument("--rss-max-length", type=int, default=24)
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=4, help="runs of each engine")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    parser.add_argument("--prepare-model", help=argparse.SUPPRESS)
    parser.add_argument("--ct2", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.rss_child:
        rss_child(args)
        return
    sentences, origin = english_sentences(max(args.sentences, args.hf_sentences,
                                              10 * args.rss_sentences))
    if args.prepare_model:
        hf, ct2, model = prepare_model(Path(args.prepare_model), sentences)
        print(json.dumps({"hf": str(hf), "ct2": str(ct2), "model": model}))
        return

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench_translate_") as tmp:
        work = Path(tmp)
        prepared = run_child("--prepare-model", str(work), threads=args.threads)
        hf, ct2, model = Path(prepared["hf"]), Path(prepared["ct2"]), prepared["model"]
        rss = bench_rss(sentences, ct2, work, args)  # before this process grows
        source = write_source(work / "source.parquet", sentences[: args.sentences])
        runs: dict[str, list[dict]] = {"pipeline": [], "raw_ct2": [], "hf_generate": []}
        for _ in range(args.repeats):  # interleaved, so load from others hits all alike
            runs["pipeline"].append(bench_pipeline(source, ct2, work, args))
            runs["raw_ct2"].append(bench_raw_ct2(sentences[: args.sentences], ct2, args))
            runs["hf_generate"].append(bench_hf(sentences[: args.hf_sentences], hf, args))
        results = {name: best_run(rows) for name, rows in runs.items()}
    info = {**machine(args), "load_average_at_start": load_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    a, b, c = results["pipeline"], results["raw_ct2"], results["hf_generate"]
    speed = {  # best runs; CPU-time rates are the ones other processes disturb least
        "pipeline_vs_raw_ct2": round(a["tokens_per_s"] / b["tokens_per_s"], 3),
        "pipeline_vs_hf": round(a["tokens_per_s"] / c["tokens_per_s"], 2),
        "cpu_pipeline_vs_raw_ct2": round(
            a["best_cpu_tokens_per_s"] / b["best_cpu_tokens_per_s"], 3),
        "cpu_pipeline_vs_hf": round(a["best_cpu_tokens_per_s"] / c["best_cpu_tokens_per_s"], 2),
        "whole_call_vs_raw_ct2": round(a["whole_call_tokens_per_s"] / b["tokens_per_s"], 3),
        "whole_call_cpu_vs_raw_ct2": round(
            a["whole_call_cpu_tokens_per_s"] / b["best_cpu_tokens_per_s"], 3),
    }
    report = {"machine": info, "model": model, "sentences": origin, "lang": LANG,
              "settings": {"beam_size": 1, "max_length": args.max_length,
                           "batch_tokens": args.batch_tokens, "ct2_compute_type": "int8",
                           "hf_dtype": "float32", "hf_batch": args.hf_batch},
              "results": results, "ratios": speed, "rss": rss}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")

    print(f"model: {model}; sentences: {origin}; {args.threads} thread(s); load avg "
          f"{info['load_average_at_start']} -> {info['load_average_at_end']}")
    print(f"{'engine':<24}{'sentences':>10}{'tokens':>8}{'best s':>8}{'tok/s':>9}"
          f"{'median':>9}{'tok/CPU-s':>11}{'median':>9}")
    for name, row in results.items():
        print(f"{name:<24}{row['sentences']:>10}{row['target_tokens']:>8}"
              f"{row['seconds']:>8.2f}{row['tokens_per_s']:>9.0f}"
              f"{row['median_tokens_per_s']:>9.0f}{row['best_cpu_tokens_per_s']:>11.0f}"
              f"{row['median_cpu_tokens_per_s']:>9.0f}")
    print(f"{'pipeline (whole call)':<24}{a['sentences']:>10}{a['target_tokens']:>8}"
          f"{a['whole_call_seconds']:>8.2f}{a['whole_call_tokens_per_s']:>9.0f}{'':>9}"
          f"{a['whole_call_cpu_tokens_per_s']:>11.0f}")
    print(f"pipeline / raw CT2: {speed['pipeline_vs_raw_ct2']} wall, "
          f"{speed['cpu_pipeline_vs_raw_ct2']} CPU time (whole call: "
          f"{speed['whole_call_vs_raw_ct2']} wall, {speed['whole_call_cpu_vs_raw_ct2']} CPU)")
    print(f"pipeline / HF generate: {speed['pipeline_vs_hf']}x wall, "
          f"{speed['cpu_pipeline_vs_hf']}x CPU time")
    for n, r in rss["sizes"].items():
        print(f"peak RSS, {n:>6} sentences ({r['shards']} shards): {r['maxrss_mb']:.0f} MB "
              f"(VmHWM {r['vmhwm_mb']:.0f} MB)")
    print(f"peak RSS ratio 10x input: {rss['ratio']}")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
