"""Parameters stored in the memory order the fast kernels read, with TransformerLens' shapes.

``W_Q[n_heads, d_model, d_head]`` is the shape users index, but one matrix product over all
heads wants ``[d_model, n_heads * d_head]``; the unembedding wants ``W_E.T`` contiguous. Rather
than keeping converted copies (which go stale when a weight is edited in place and cost
memory), each such parameter is stored in the kernel's order and shown in the user's shape: the
kernel reads a view of the parameter's own memory, so the parameter is the only copy of the
weight and every edit, however it is made, is what the next forward pass computes with.
"""

from __future__ import annotations

import torch
from torch import nn


def stored_as(W: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """``W`` (same shape and values) with its memory laid out as ``W.permute(order)``.
    ``order`` is its own inverse (a swap of axes), so permuting back restores the shape."""
    return W.permute(order).contiguous().permute(order)


def is_stored_as(W: torch.Tensor, order: tuple[int, ...]) -> bool:
    return W.permute(order).is_contiguous()


def keep_kernel_layouts(module: nn.Module, layouts: dict[str, tuple[int, ...]]) -> None:
    """Lay out ``module``'s parameters as ``layouts`` says, now and after every
    ``load_state_dict`` (which with ``assign=True`` installs a checkpoint's tensors as they come).
    Anything else that replaces a parameter still computes correctly, only without the free view."""

    def restore(*_) -> None:
        for name, order in layouts.items():
            param = getattr(module, name)
            if not is_stored_as(param, order):
                param.data = stored_as(param.data, order)

    restore()
    module.register_load_state_dict_post_hook(restore)
