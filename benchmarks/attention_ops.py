"""The attention ops timed and measured by ``run.py``: GPT-3's banded kernel vs dense causal SDPA.

Kept apart from ``run.py`` so the memory subprocess of the dense op imports only ``torch``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention_inputs(
    heads: int, tokens: int, head_dim: int, seed: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of shape (1, heads, tokens, head_dim) requiring grad, and an output gradient."""
    generator = torch.Generator().manual_seed(seed)
    shape = (1, heads, tokens, head_dim)
    q, k, v = (torch.randn(shape, generator=generator).requires_grad_() for _ in range(3))
    return q, k, v, torch.randn(shape, generator=generator)


def banded_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, window: int) -> None:
    """Forward + backward of ``banded_attention_forward`` (GPT-3's locally banded layers)."""
    from hf_paper_models.models.attention import banded_attention_forward

    out, _ = banded_attention_forward(nn.Module(), q, k, v, window)  # (b, n, h, d)
    torch.autograd.grad(out.transpose(1, 2), (q, k, v), grad)


def dense_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor) -> None:
    """Forward + backward of dense causal SDPA, what transformers' GPT-2 runs."""
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.autograd.grad(out, (q, k, v), grad)
