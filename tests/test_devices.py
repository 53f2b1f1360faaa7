"""What the GPU path changes (pipeline/devices.py), checked on the CPU: the choices by device,
autocast scoped to a module's forward, SDPA switched on, host tensors copied as they were."""

from __future__ import annotations

import pytest
import torch

from pipeline.devices import (
    autocast,
    autocast_dtype,
    autocast_forward,
    precision_name,
    to_device,
    use_sdpa,
)


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_bf16_autocast_is_chosen_on_a_gpu_that_has_bf16(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(device) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(device) is None  # an older GPU: fp32 (no fp16 without a scaler)


def test_the_cpu_runs_fp32_without_asking_cuda(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("the CPU path asked CUDA about bf16")

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", no_cuda)
    assert autocast_dtype("cpu") is None and autocast_dtype(torch.device("cpu")) is None
    assert precision_name(None) == "fp32" and precision_name(torch.bfloat16) == "bf16"


def test_autocast_is_nothing_at_all_without_a_dtype():
    with autocast("cpu", None):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        assert torch.nn.Linear(4, 2)(torch.ones(3, 4)).dtype == torch.bfloat16


def test_autocast_forward_covers_the_forward_only_and_restores_it():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(5, 8)
    plain = layer(x)
    with autocast_forward(layer, None):  # fp32: the module is not touched
        assert "forward" not in vars(layer)
        assert torch.equal(layer(x), plain)
    with autocast_forward(layer, torch.bfloat16):
        out = layer(x)
        assert out.dtype == torch.bfloat16
        assert (out.float() @ torch.ones(4)).dtype == torch.float32  # the caller's ops: fp32
    assert "forward" not in vars(layer) and torch.equal(layer(x), plain)
    torch.testing.assert_close(out.float(), plain, atol=0.05, rtol=0.05)

    own = layer.forward  # a patch made before (the trunk memo patches forwards too) stays
    layer.forward = lambda inp: own(inp) * 2
    with autocast_forward(layer, torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    assert torch.equal(layer(x), plain * 2)


def test_use_sdpa_switches_an_eager_model_and_keeps_its_outputs(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path)
    model = BertModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 8, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        eager = model(input_ids=ids, attention_mask=mask).last_hidden_state
        use_sdpa(torch.nn.ModuleList([model]))  # found inside a container (a ST model)
        assert model.config._attn_implementation == "sdpa"
        sdpa = model(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(sdpa[real], eager[real], atol=1e-5, rtol=1e-5)


def test_to_device_on_the_cpu_is_the_tensor_itself():
    t = torch.arange(6)
    assert to_device(t, "cpu") is t and to_device(t, torch.device("cpu")) is t
