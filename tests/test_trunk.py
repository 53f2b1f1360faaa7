"""The frozen-trunk memo (pipeline/encoders/trunk.py): same embeddings as the plain model,
lower layers run once per text, gradients in the top layers only, keyed by the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.encoders.catalog import load_encoder
from pipeline.encoders.trunk import backbone_layers, frozen_trunk
from tests.test_train import LEXICON, workspace  # noqa: F401 (workspace: a fixture)

TEXTS = [" ".join(words[i:] + words[:i]) for words in LEXICON.values() for i in range(3)]


def tiny(workspace):  # noqa: F811
    return load_encoder("tiny", workspace["root"] / "encoders.yaml", device="cpu",
                        models_dir=None)


def test_memo_gives_the_plain_models_embeddings_cold_and_warm(workspace, tmp_path):  # noqa: F811
    model = tiny(workspace)
    plain = model.encode(TEXTS, batch_size=4)
    with frozen_trunk(model, 1, tmp_path) as memo:
        cold = model.encode(TEXTS, batch_size=4)
        assert memo.misses == len(set(TEXTS)) and memo.hits == len(TEXTS) - memo.misses
    # A new block reads the flushed shard: no text runs the lower layer again, and batches
    # of another composition (other padding) give the same states.
    with frozen_trunk(model, 1, tmp_path) as memo:
        warm = model.encode(TEXTS[::-1], batch_size=3)[::-1]
        assert memo.misses == 0 and memo.hits == len(TEXTS)
    np.testing.assert_allclose(cold, plain, atol=1e-6)
    np.testing.assert_allclose(warm, plain, atol=1e-6)
    assert model.encode(TEXTS[:2], batch_size=4) == pytest.approx(plain[:2], abs=1e-6)  # unpatched


def test_gradients_reach_the_top_layers_only(workspace, tmp_path):  # noqa: F811
    model = tiny(workspace)
    backbone, layers = backbone_layers(model)
    model.train()
    with frozen_trunk(model, 1, tmp_path):
        features = model.tokenize(TEXTS[:4])
        model(features)["sentence_embedding"].sum().backward()
    assert all(p.grad is not None for p in layers[1].parameters())
    assert all(p.grad is None for p in (*layers[0].parameters(),
                                        *backbone.embeddings.parameters()))


def test_other_lower_weights_get_another_memo(workspace, tmp_path):  # noqa: F811
    model = tiny(workspace)
    with frozen_trunk(model, 1, tmp_path):
        model.encode(TEXTS, batch_size=4)
    _, layers = backbone_layers(model)
    with torch.no_grad():
        layers[0].output.dense.bias.add_(0.5)  # a changed lower layer: its states change too
    changed = model.encode(TEXTS, batch_size=4)
    with frozen_trunk(model, 1, tmp_path) as memo:
        assert memo.hits == 0 and memo.misses == 0
        np.testing.assert_allclose(model.encode(TEXTS, batch_size=4), changed, atol=1e-6)
    assert len(list(tmp_path.iterdir())) == 2


def test_split_out_of_range_is_refused(workspace, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="between 1 and 1"):
        with frozen_trunk(tiny(workspace), 2, tmp_path):
            pass


def test_columns_merged_by_sentence_transformers_read_the_same_states(workspace, tmp_path):  # noqa: F811
    # A loss embedding several columns in one forward pass pads the narrower ones with id 0
    # (<s> for XLM-R tokenizers: a real token id) after their own pad tokens; the text still
    # ends at its first pad token.
    model = tiny(workspace)
    pad = model.tokenizer.pad_token_id
    features = {k: v for k, v in model.tokenize(TEXTS[:4]).items() if torch.is_tensor(v)}
    with torch.no_grad():
        plain = model(dict(features))["sentence_embedding"]
        merged = {k: torch.nn.functional.pad(v, (0, 5), value=pad + 1 if k == "input_ids" else 0)
                  for k, v in features.items()}
        for _ in range(2):  # cold (the lower layers run on the merged rows), then warm
            with frozen_trunk(model, 1, tmp_path):
                got = model(dict(merged))["sentence_embedding"]
            torch.testing.assert_close(got, plain, atol=1e-5, rtol=0)
    left = {k: torch.nn.functional.pad(v, (1, 0), value=pad if k == "input_ids" else 0)
            for k, v in features.items()}
    with pytest.raises(ValueError, match="right-padded"), frozen_trunk(model, 1, tmp_path):
        model(left)


def test_typed_rows_are_computed_not_stored_and_top_stops_early(workspace, tmp_path):  # noqa: F811
    model = tiny(workspace)
    backbone, _ = backbone_layers(model)
    features = model.tokenize(TEXTS[:4])
    ids, mask = features["input_ids"], features["attention_mask"]
    types = torch.zeros_like(ids)
    types[:2] = mask[:2]  # rows 0 and 1: a second segment, whose states the memo cannot key
    with torch.no_grad():
        plain = backbone(input_ids=ids, attention_mask=mask, token_type_ids=types,
                         output_hidden_states=True).hidden_states
        for _ in range(2):  # the typed rows are computed again, the others read back
            with frozen_trunk(model, 1, tmp_path, top=1) as memo:
                got = backbone(input_ids=ids, attention_mask=mask,
                               token_type_ids=types).last_hidden_state
            real = mask.bool()  # top=1: the states after layer 0, nothing above the memo
            assert torch.allclose(got[real], plain[1][real], atol=1e-5)
        assert (memo.hits, memo.misses) == (2, 0)
    with pytest.raises(ValueError, match="trunk top must be between the split 1"):
        with frozen_trunk(model, 1, tmp_path, top=3):
            pass


def test_autocast_states_get_a_memo_of_their_own(workspace, tmp_path):  # noqa: F811
    model = tiny(workspace)
    plain = model.encode(TEXTS, batch_size=4)
    with frozen_trunk(model, 1, tmp_path) as memo:
        model.encode(TEXTS, batch_size=4)
        fp32_dir = memo.directory
    # bf16 (a GPU's autocast, here the CPU's): the lower layer runs in it, whatever the caller
    # runs, and its states are stored apart: they never serve an fp32 run.
    for _ in range(2):
        with frozen_trunk(model, 1, tmp_path, dtype=torch.bfloat16) as memo:
            low = model.encode(TEXTS, batch_size=4)
        assert memo.directory != fp32_dir
    assert memo.misses == 0 and memo.hits == len(TEXTS)  # the second block read them back
    assert not np.array_equal(low, plain)
    np.testing.assert_allclose(low, plain, atol=0.05)
    with frozen_trunk(model, 1, tmp_path) as memo:  # fp32 still finds its own states
        np.testing.assert_allclose(model.encode(TEXTS, batch_size=4), plain, atol=1e-6)
        assert memo.misses == 0 and memo.directory == fp32_dir
    assert len(list(tmp_path.iterdir())) == 2
