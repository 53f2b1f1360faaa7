"""How models run on the device a stage resolved: precision, attention kernel, host copies.

Every choice here follows from the device alone (a stage's ``device`` setting, resolved by
:func:`pipeline.runtime.resolve_device`), never from a setting of its own. On a CUDA GPU the
transformer layers run under bf16 autocast when the GPU has bf16 (the weights stay fp32, so
weight hashes and saved models do not change; the trunk memo keys bf16 states apart), use
PyTorch's fused attention (SDPA), and small host tensors are copied without making the host
wait for the GPU. On the CPU
nothing changes: fp32, the attention each stage always used, ordinary copies, so CPU results
stay bit for bit those the committed outputs were made with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype of transformer layers on ``device``: bf16 or none (fp32).

    bf16 on a CUDA GPU that supports it: the same exponent range as fp32, so no loss scaling
    and no overflow. fp32 elsewhere: fp16 would need a gradient scaler for training, and the
    CPU path must keep its committed results.

    Args:
        device: A torch device (``cpu``, ``cuda``, ``cuda:1``).

    Returns:
        ``torch.bfloat16``, or ``None`` for plain fp32.
    """
    if torch.device(device).type != "cuda" or not torch.cuda.is_bf16_supported():
        return None
    return torch.bfloat16


def precision_name(dtype: torch.dtype | None) -> str:
    """``bf16`` or ``fp32``: how :func:`autocast_dtype`'s answer is written in logs and keys."""
    return {torch.bfloat16: "bf16", None: "fp32"}[dtype]


def autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device_type``, or nothing at all when ``dtype`` is None.

    Nothing at all, not a disabled autocast: the fp32 path then runs exactly the code it ran
    before autocast existed here.
    """
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


@contextlib.contextmanager
def autocast_forward(module: torch.nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """Within the block, ``module``'s forward passes run under autocast to ``dtype``.

    For models another library calls (sentence-transformers' ``encode`` inside mteb): only the
    forward pass is autocast, not what the caller does with its outputs (scores, similarity
    matrices). ``dtype`` None leaves the module untouched.

    Args:
        module: The module (its parameters' device gives the autocast device type).
        dtype: The autocast dtype, or None.
    """
    if dtype is None:
        yield
        return
    device_type = next(module.parameters()).device.type
    forward, patched = module.forward, "forward" in vars(module)

    def forward_in_autocast(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type=device_type, dtype=dtype):
            return forward(*args, **kwargs)

    module.forward = forward_in_autocast
    try:
        yield
    finally:
        if patched:  # someone else's patch was there first: give it back
            module.forward = forward
        else:
            del module.forward  # back to the class method


def use_sdpa(model: torch.nn.Module) -> None:
    """Switch every Hugging Face model inside ``model`` that supports it to SDPA attention.

    transformers already picks SDPA by default; this holds for a model saved or loaded with
    another implementation (eager), which would compute every attention matrix in full.
    """
    from transformers import PreTrainedModel

    for module in model.modules():
        if (isinstance(module, PreTrainedModel) and getattr(module, "_supports_sdpa", False)
                and module.config._attn_implementation != "sdpa"):
            module.set_attn_implementation("sdpa")


def to_device(tensor: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """A host tensor on ``device``; to a GPU without the host waiting for it.

    A plain copy from pageable host memory to a GPU waits until every kernel queued before it
    has run: a host sync per training step for a batch's labels. From pinned memory the copy
    is queued like a kernel (PyTorch keeps the pinned block until the copy is done). On the
    CPU this is ``tensor.to(device)``: the tensor itself.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
