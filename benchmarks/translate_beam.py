"""Beam search against greedy decoding for the default translate settings: chrF and time.

Translates the English side of the NMT dev split (``data/seed/bible_nmt_dev.parquet``, 1,040
verses no training saw and no evaluation uses) into every pool language with the committed
model and the translate stage's settings, once per beam size, and reports per beam size:

- chrF and BLEU against the human translations of the same verses (the translate stage's
  own scoring), per language and averaged;
- the share of translations the ``build_corpus`` filters would drop (params.yaml's
  thresholds, language filter included), per language;
- wall seconds for all languages. The beam sizes alternate ``--repeats`` times and each
  keeps its fastest run, so a busy machine slows them alike; compare the ratios.

The output of each beam size is deterministic: the table's quality columns do not depend on
the machine's load.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/translate_beam.py [--beams 1 2 4] [--repeats 2]

Needs ``dvc repro prepare_seed`` (the dev split). Writes ``benchmarks/results/translate_beam.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEV = ROOT / "data/seed/bible_nmt_dev.parquet"
RESULTS = ROOT / "benchmarks/results/translate_beam.json"


def main() -> None:
    import numpy as np
    import pyarrow as pa

    from pipeline.config import LangsConfig, load_section
    from pipeline.corpus import langid
    from pipeline.corpus.build_corpus import BuildCorpusConfig
    from pipeline.corpus.filters import REASONS, failure_matrix
    from pipeline.io import read_table
    from pipeline.runtime import run_context
    from pipeline.translate.engine import load_translator
    from pipeline.translate.translate import TranslateConfig, corpus_scores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="first N dev verses only")
    parser.add_argument("--dev", type=Path, default=DEV, help="the NMT dev split")
    args = parser.parse_args()

    params = ROOT / "params.yaml"
    cfg = load_section(params, "translate", TranslateConfig)
    corpus_cfg = load_section(params, "build_corpus", BuildCorpusConfig)
    langs = load_section(params, "langs", LangsConfig)
    dev = read_table(args.dev, ["id", langs.source, *langs.pool]).dropna()
    if args.limit:
        dev = dev.head(args.limit)
    sources = dev[langs.source].tolist()
    detector = langid.detector(corpus_cfg.language_id, (langs.source, *langs.pool),
                               corpus_cfg.language_id_margin)

    def translate(beam: int) -> tuple[float, dict[str, list[str]]]:
        translator = load_translator(
            ROOT / cfg.model_dir, device="cpu", inter_threads=cfg.inter_threads,
            intra_threads=cfg.intra_threads, beam_size=beam,
            max_batch_tokens=cfg.max_batch_tokens, max_decoding_length=cfg.max_decoding_length,
            no_repeat_ngram_size=cfg.no_repeat_ngram_size)
        start = time.perf_counter()
        out = {lang: translator.translate(sources, lang) for lang in langs.pool}
        return time.perf_counter() - start, out

    seconds: dict[int, list[float]] = {b: [] for b in args.beams}
    outputs: dict[int, dict[str, list[str]]] = {}
    for repeat in range(args.repeats):
        for beam in args.beams:
            took, out = translate(beam)
            seconds[beam].append(took)
            if beam in outputs and outputs[beam] != out:
                raise SystemExit(f"beam {beam}: repeat {repeat} translated differently")
            outputs[beam] = out
            print(f"repeat {repeat}: beam {beam} {took:.1f} s", flush=True)

    rows = []
    for beam in args.beams:
        per_lang = {}
        for lang in langs.pool:
            hyps = outputs[beam][lang]
            scores = corpus_scores(hyps, dev[lang].tolist(), lang)
            fails = failure_matrix(
                pa.array(hyps), pa.array(sources), lang, detector=detector,
                max_repeat=corpus_cfg.max_repeat, max_copy_ratio=corpus_cfg.max_copy_ratio,
                min_script_fraction=corpus_cfg.min_script_fraction,
                min_length_ratio=corpus_cfg.min_length_ratio,
                max_length_ratio=corpus_cfg.max_length_ratio)
            per_lang[lang] = {"chrf": scores["chrf"], "bleu": scores["bleu"],
                              "dropped": float(fails.any(axis=0).mean()),
                              "failures": dict(zip(REASONS, fails.sum(axis=1).tolist(),
                                                   strict=True))}
        rows.append({
            "beam": beam, "seconds": min(seconds[beam]), "seconds_all": seconds[beam],
            "chrf_mean": float(np.mean([v["chrf"] for v in per_lang.values()])),
            "bleu_mean": float(np.mean([v["bleu"] for v in per_lang.values()])),
            "dropped_mean": float(np.mean([v["dropped"] for v in per_lang.values()])),
            "languages": per_lang,
        })
    base = min(r["seconds"] for r in rows)
    cpu = run_context()["cpu_model"]
    print(f"\n{len(sources)} dev verses x {len(langs.pool)} languages; CPU {cpu}")
    print("| beam | seconds | vs fastest | chrF (mean) | BLEU (mean) | dropped by filters | "
          + " | ".join(f"chrF {lang[:3]}" for lang in langs.pool) + " |")
    for r in rows:
        print(f"| {r['beam']} | {r['seconds']:.1f} | {r['seconds'] / base:.2f} | "
              f"{r['chrf_mean']:.2f} | {r['bleu_mean']:.2f} | {r['dropped_mean'] * 100:.2f} % | "
              + " | ".join(f"{r['languages'][lang]['chrf']:.1f}" for lang in langs.pool) + " |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "cpu": cpu, "verses": len(sources), "repeats": args.repeats,
        "settings": {"inter_threads": cfg.inter_threads, "intra_threads": cfg.intra_threads,
                     "max_batch_tokens": cfg.max_batch_tokens,
                     "no_repeat_ngram_size": cfg.no_repeat_ngram_size},
        "results": rows,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
