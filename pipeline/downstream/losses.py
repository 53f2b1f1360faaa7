r"""The loss terms of DR-MIM and EPAR, as small functions on tensors.

Each function is checked on small tensors in ``tests/test_downstream.py``; the methods in
:mod:`pipeline.downstream.methods` only weight and combine them. Notation: ``u`` universal
features, ``s`` specific features, ``n`` items (sentences or tokens), ``d`` feature width.

- :func:`grad_reverse` — identity forward, ``-λ ×`` gradient backward (Ganin & Lempitsky, 2015).
- :func:`decorrelation` — mean squared cross-correlation between the columns of ``u`` and
  ``s`` (0 when every universal dimension is uncorrelated with every specific one).
- :func:`infonce_bound` — :math:`\hat I_{NCE} = \frac1n\sum_i \big(T_{ii} -
  \log\sum_j e^{T_{ij}}\big) + \log n \le I(u; o)` for critic scores ``T`` (positives on the
  diagonal); at most ``log n``.
- :func:`jsd_bound` — :math:`E_P[-\mathrm{sp}(-T)] - E_{P\otimes Q}[\mathrm{sp}(T)] + \log 4
  \le 2\,\mathrm{JSD}(P\,\|\,P_u\otimes P_o)` (Hjelm et al., 2019, shifted by ``log 4`` so that
  independence gives 0).
- :func:`parallel_tie` — multi-way InfoNCE between translations (the project's alignment
  loss) on the universal features.
- :func:`attention_pull` — KL(clean ‖ perturbed) of attention rows, per layer, head and
  query token (the clean pass is the target and gets no gradient).
- :func:`robust_targets`, :func:`soft_cross_entropy` — EPAR's robust target and its loss.
- :func:`embedding_push` — EPAR's perturbation of the input of the trainable block.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from pipeline.devices import to_device


class _GradReverse(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``-lam`` in the backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.lam * grad, None


def grad_reverse(x: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Gradient reversal layer: returns ``x``; its gradient comes back as ``-lam × grad``."""
    return _GradReverse.apply(x, lam)


def decorrelation(u: torch.Tensor, s: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean squared cross-correlation between the features of ``u`` and of ``s``.

    Args:
        u: ``(n, du)`` universal features.
        s: ``(n, ds)`` specific features (same items).
        eps: Added to the standard deviations (constant columns).

    Returns:
        Scalar in ``[0, 1]``: the mean over ``du × ds`` of the squared Pearson correlation
        between a column of ``u`` and a column of ``s``.
    """
    u = (u - u.mean(0)) / (u.std(0, unbiased=False) + eps)
    s = (s - s.mean(0)) / (s.std(0, unbiased=False) + eps)
    corr = u.T @ s / u.shape[0]  # (du, ds)
    return corr.pow(2).mean()


def infonce_bound(scores: torch.Tensor) -> torch.Tensor:
    """InfoNCE lower bound on mutual information from an ``(n, n)`` critic score matrix.

    ``scores[i, j] = T(u_i, o_j)``; the diagonal holds the jointly drawn pairs.
    """
    n = scores.shape[0]
    return (scores.diagonal() - scores.logsumexp(dim=1)).mean() + math.log(n)


def jsd_bound(scores: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon lower bound (shifted to be 0 under independence) from critic scores.

    Off-diagonal pairs ``(u_i, o_j), i ≠ j`` stand for the product of the marginals.
    """
    n = scores.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=scores.device)
    joint = -F.softplus(-scores.diagonal()).mean()
    marginal = F.softplus(scores[off]).mean()
    return joint - marginal + math.log(4.0)


MI_BOUNDS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "infonce": infonce_bound,
    "jsd": jsd_bound,
}


class SeparableCritic(torch.nn.Module):
    """Separable critic ``T(u, o) = f(u) · g(o)`` with small MLPs ``f`` and ``g``.

    All ``n × n`` scores come out of one matrix product, as InfoNCE and JSD need.

    Args:
        u_dim: Width of the first variable.
        o_dim: Width of the second variable.
        dim: Width of the shared embedding space.
    """

    def __init__(self, u_dim: int, o_dim: int, dim: int) -> None:
        super().__init__()
        self.f = torch.nn.Sequential(
            torch.nn.Linear(u_dim, dim), torch.nn.ReLU(), torch.nn.Linear(dim, dim)
        )
        self.g = torch.nn.Sequential(
            torch.nn.Linear(o_dim, dim), torch.nn.ReLU(), torch.nn.Linear(dim, dim)
        )

    def forward(self, u: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Scores ``(n, n)``: entry ``[i, j]`` is ``T(u_i, o_j)``."""
        return self.f(u) @ self.g(o).T


def parallel_tie(u: torch.Tensor, rows: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Multi-way InfoNCE between the universal features of translations.

    Every sentence is an anchor; the other translations of its row are its positives, every
    sentence of another row a negative: the project's alignment loss
    (:func:`pipeline.losses.multiway_infonce.multiway_pair_losses`) on cosine similarities.
    Unlike pulling translations to their row centroid, it has no collapsed optimum (equal
    vectors for all rows score ``log(1 + negatives)``), so it does not fight the task loss.

    Args:
        u: ``(n, d)`` universal features, grouped by row: the same number of consecutive
            sentences per row.
        rows: ``(n,)`` row index of each sentence (best on the host: the grouping check reads
            it there without waiting for the GPU).
        temperature: Softmax temperature.

    Returns:
        Scalar: the mean over (anchor, positive) pairs.

    Raises:
        ValueError: The sentences are not grouped in equal consecutive runs per row.
    """
    from pipeline.losses.multiway_infonce import multiway_pair_losses

    per_row = int((rows == rows[0]).sum())
    n_rows = len(rows) // per_row
    grouping = torch.arange(n_rows, device=rows.device).repeat_interleave(per_row)
    if per_row < 2 or n_rows * per_row != len(rows) or not torch.equal(
        torch.unique_consecutive(rows, return_inverse=True)[1], grouping
    ):
        raise ValueError("parallel_tie needs 2 or more consecutive sentences per row, the same "
                         "number for every row")
    z = F.normalize(u, dim=-1).view(n_rows, per_row, -1)  # (rows, per_row, d)
    anchors = torch.arange(n_rows, device=u.device).repeat_interleave(per_row)
    slots = torch.arange(per_row, device=u.device).repeat(n_rows)
    return multiway_pair_losses(z, anchors, slots, temperature).mean()


def attention_pull(
    clean: list[torch.Tensor], perturbed: list[torch.Tensor], mask: torch.Tensor,
    eps: float = 1e-9,
) -> torch.Tensor:
    """KL(clean ‖ perturbed) between attention distributions.

    Averaged over layers, heads and non-padding query tokens.

    Args:
        clean: Per layer ``(b, heads, s, s)`` attention probabilities of the clean pass (the
            target: detached here).
        perturbed: The same for the perturbed pass.
        mask: ``(b, s)`` 1 for real tokens, 0 for padding.
        eps: Floor inside the logarithm of the perturbed probabilities.

    Returns:
        Scalar, 0 when the attention maps agree.
    """
    rows = mask[:, None, :, None].to(clean[0].dtype)  # (b, 1, s, 1): real query tokens
    total = clean[0].new_zeros(())
    for p, q in zip(clean, perturbed):
        p = p.detach()
        kl = (torch.xlogy(p, p) - p * torch.log(q + eps)).sum(-1, keepdim=True)  # (b, h, s, 1)
        total = total + (kl * rows).sum() / (rows.sum() * p.shape[1])
    return total / len(clean)


def robust_targets(labels: torch.Tensor, clean_logits: torch.Tensor, mix: float) -> torch.Tensor:
    """EPAR's robust target: ``(1 - mix) × one-hot(label) + mix × softmax(clean logits)``.

    Args:
        labels: ``(n,)`` gold class (or position) indices.
        clean_logits: ``(n, c)`` logits of the clean pass (detached here).
        mix: Share of the clean prediction in ``[0, 1]``.

    Returns:
        ``(n, c)`` target distributions.
    """
    onehot = F.one_hot(labels, clean_logits.shape[-1]).to(clean_logits.dtype)
    return (1.0 - mix) * onehot + mix * clean_logits.detach().softmax(-1)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``(n, c)`` logits against ``(n, c)`` target distributions (mean)."""
    return -(targets * logits.log_softmax(-1)).sum(-1).mean()


def token_rms(h: torch.Tensor) -> torch.Tensor:
    """``(b, s, 1)`` root-mean-square of each token vector of ``h`` ``(b, s, d)``."""
    return h.pow(2).mean(-1, keepdim=True).sqrt()


def embedding_push(
    pooled: Callable[[torch.Tensor], torch.Tensor],
    h: torch.Tensor,
    mask: torch.Tensor,
    centroid: torch.Tensor,
    epsilon: float,
    generator: torch.Generator | None = None,
    follow_gradient: bool = True,
) -> torch.Tensor:
    """EPAR's Embedding-Push: a perturbation of the block input away from the English cluster.

    One step of normalised gradient ascent (as in FGM/PGD adversarial training, but on the
    distance to the English centroid instead of the task loss): start from a random
    direction, take the gradient of ``‖pooled(h + δ) − centroid‖²`` with respect to ``δ`` and
    rescale it per token to ``epsilon × rms(token)``.

    Args:
        pooled: Maps the block input ``(b, s, d)`` to pooled sentence vectors ``(b, d)``.
        h: ``(b, s, d)`` input of the trainable block (frozen features; no gradient needed).
        mask: ``(b, s)`` 1 for real tokens.
        centroid: ``(d,)`` English centroid of the pooled vectors.
        epsilon: Radius per token, relative to the token's RMS norm.
        generator: Random generator of the start direction.
        follow_gradient: ``False`` returns the random start direction at the same radius
            (the ``no_push`` ablation: noise of equal size, not pushed anywhere).

    Returns:
        ``(b, s, d)`` perturbation ``δ`` (detached, zero on padding).
    """
    radius = epsilon * token_rms(h) * mask[..., None].to(h.dtype)  # (b, s, 1)
    # Drawn by the (host) generator whatever the device, so the CPU stream stays as it was.
    noise = to_device(torch.randn(h.shape, generator=generator, dtype=h.dtype), h.device)
    start = radius * F.normalize(noise, dim=-1)
    if not follow_gradient:
        return start.detach()
    delta = (0.5 * start).detach().requires_grad_(True)
    distance = (pooled(h.detach() + delta) - centroid.detach()).pow(2).sum(-1).mean()
    (grad,) = torch.autograd.grad(distance, delta)
    return (radius * F.normalize(grad, dim=-1)).detach()
