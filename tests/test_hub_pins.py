"""Hub models are pinned: the commit loaded is the one recorded, a missing pin says how to
fetch it, and weights a checkpoint lacks are saved as zeros.

A temporary HF cache holds a tiny masked-LM checkpoint (no pooler, like XLM-R's and mBERT's)
under a made-up id at two commits, ``main`` and a pinned one with other weights, and
NLLB-200 (tests/fixtures/hub.py) under a commit the NMT catalogue does not pin. The code
under test runs in this process with huggingface_hub pointed at that cache, offline.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from tests.fixtures.hub import (
    MBERT_ID,
    MBERT_REVISION,
    NLLB_ID,
    NLLB_REVISION,
    hub_env,
    write_snapshot,
)

TINY_ID = "multiway-align-tests/tiny-mlm"
MAIN = "a" * 40  # what refs/main names
PINNED = "b" * 40  # cached too, with other weights
ABSENT = "c" * 40  # not cached


def _snapshot(env: dict[str, str], repo_id: str, commit: str) -> Path:
    repo = f"models--{repo_id.replace('/', '--')}"
    return Path(env["HF_HUB_CACHE"]) / repo / "snapshots" / commit


@pytest.fixture(scope="module")
def pins(hub_cache, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """``(catalogue, env)``: the cache described above and an encoder catalogue over it."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    _, fixture_env = hub_cache
    root = tmp_path_factory.mktemp("pins")
    env = hub_env(root)
    hub = Path(env["HF_HUB_CACHE"])
    mbert = _snapshot(fixture_env, MBERT_ID, MBERT_REVISION)
    for seed, commit in ((1, PINNED), (0, MAIN)):  # main last: refs/main names it
        files = root / f"mlm-{seed}"
        shutil.copytree(mbert, files, ignore=shutil.ignore_patterns("config.json", "*.safetensors"))
        config = BertConfig.from_pretrained(mbert)
        config.architectures = ["BertForMaskedLM"]
        torch.manual_seed(seed)
        BertForMaskedLM(config).save_pretrained(files)
        write_snapshot(hub, TINY_ID, commit, files)
    write_snapshot(hub, NLLB_ID, MAIN, _snapshot(fixture_env, NLLB_ID, NLLB_REVISION))
    catalogue = root / "encoders.yaml"
    catalogue.write_text("".join(f"{key}:\n  source: {TINY_ID}\n  revision: {rev}\n"
                                 for key, rev in (("pinned", PINNED), ("unpinned", "null"),
                                                  ("absent", ABSENT))))
    return catalogue, env


@pytest.fixture
def offline(pins, monkeypatch) -> Path:
    """Point huggingface_hub (and transformers through it) at the cache, offline."""
    import huggingface_hub.constants

    catalogue, env = pins
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return catalogue


def _hashes(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def test_import_records_the_commit_loaded_and_zeroes_absent_weights(pins, offline, tmp_path):
    from pipeline.encoders.import_encoder import ImportEncoderConfig, run

    cfg = ImportEncoderConfig(catalogue=str(offline), output_dir=str(tmp_path), threads=1)
    out = tmp_path / "pinned"
    run(cfg, "pinned")
    first = _hashes(out)
    run(cfg, "pinned")
    assert _hashes(out) == first  # byte-identical, model.safetensors included
    assert "model.safetensors" in first

    meta = json.loads((out / "meta.json").read_text())
    assert (meta["source"], meta["revision"], meta["commit"]) == (TINY_ID, PINNED, PINNED)
    assert meta["initialised"] == {"pooler.dense.bias": "zeros", "pooler.dense.weight": "zeros"}
    saved = _tensors(out / "model.safetensors")
    assert not saved["pooler.dense.weight"].any() and not saved["pooler.dense.bias"].any()
    # The weights are the pinned commit's, not main's.
    key = "embeddings.word_embeddings.weight"
    _, env = pins
    pinned = _tensors(_snapshot(env, TINY_ID, PINNED) / "model.safetensors")
    main = _tensors(_snapshot(env, TINY_ID, MAIN) / "model.safetensors")
    assert saved[key].equal(pinned[f"bert.{key}"]) and not saved[key].equal(main[f"bert.{key}"])

    run(cfg, "unpinned")
    meta = json.loads((tmp_path / "unpinned" / "meta.json").read_text())
    assert (meta["revision"], meta["commit"]) == (None, MAIN)


def test_a_missing_pin_names_the_commit_and_the_command_that_fetches_it(offline, tmp_path):
    from pipeline.encoders import catalog
    from pipeline.encoders.import_encoder import ImportEncoderConfig, run
    from pipeline.translate import convert_nmt
    from pipeline.translate.convert_nmt import ConvertNmtConfig

    fetch = re.escape(f"`hf download {TINY_ID} --revision {ABSENT}`")
    error = f"^encoder 'absent': cannot load '{re.escape(TINY_ID)}' at its pinned revision " \
            f"{ABSENT} .*{fetch}"
    cfg = ImportEncoderConfig(catalogue=str(offline), output_dir=str(tmp_path), threads=1)
    with pytest.raises(FileNotFoundError, match=error):
        run(cfg, "absent")
    # Loaded by transformers (evaluate, train_encoder on a key without an imported copy).
    with pytest.raises(FileNotFoundError, match=error):
        catalog.load_encoder("absent", catalogue=offline, models_dir=None)
    with pytest.raises(FileNotFoundError, match=error):
        catalog.local_dir("absent", catalogue=offline, models_dir=None)
    assert not (tmp_path / "absent").exists()

    # An unpinned model that is not cached at all: main is what to fetch.
    spec = catalog.EncoderSpec(key="other", source="multiway-align-tests/not-cached")
    with pytest.raises(FileNotFoundError, match=r"cannot load 'multiway-align-tests/not-cached' "
                                                r"\(.*`hf download multiway-align-tests/"
                                                r"not-cached` where"):
        catalog.load_encoder("other", catalogue={"other": spec}, models_dir=None)

    # convert_nmt: the catalogue pins NLLB-200 to a commit the cache lacks (it has main).
    commit = convert_nmt.load_catalog()["nllb-200-distilled-600M"].revision
    assert re.fullmatch(r"[0-9a-f]{40}", commit) and commit != MAIN
    with pytest.raises(FileNotFoundError, match=rf"cannot be fetched at its pinned revision "
                                                rf"{commit} .*`hf download {NLLB_ID} "
                                                rf"--revision {commit}`"):
        convert_nmt.run(ConvertNmtConfig(output_dir=str(tmp_path / "nmt")),
                        "nllb-200-distilled-600M")
    assert not (tmp_path / "nmt").exists()


def test_convert_records_the_commit_converted(offline, tmp_path):
    """A hub id given directly converts main; both metadata files name its commit."""
    from pipeline.translate import convert_nmt
    from pipeline.translate.convert_nmt import ConvertNmtConfig

    metrics = convert_nmt.run(ConvertNmtConfig(output_dir=str(tmp_path)), NLLB_ID)
    assert metrics["converted"] == 1
    out = tmp_path / "nllb-200-distilled-600M"
    nmt = json.loads((out / "multiway_nmt.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    assert (nmt["source_model"], nmt["revision"], nmt["commit"]) == (NLLB_ID, None, MAIN)
    assert (meta["source"], meta["revision"], meta["commit"]) == (NLLB_ID, None, MAIN)


def test_catalogue_revisions_are_commits():
    """Pins are full commits (a branch or tag could move); only opus-mt-en-ar is unpinned."""
    from pipeline.encoders.catalog import load_catalogue
    from pipeline.translate.convert_nmt import load_catalog

    encoders = {k: s.revision for k, s in load_catalogue().items() if s.is_hub}
    nmt = {k: e.revision for k, e in load_catalog().items()}
    unpinned = [k for k, rev in {**encoders, **nmt}.items() if rev is None]
    assert unpinned == ["opus-mt-en-ar"]
    assert all(re.fullmatch(r"[0-9a-f]{40}", rev) for rev in {**encoders, **nmt}.values() if rev)
