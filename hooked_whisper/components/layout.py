"""Parameters stored in the memory order the fast kernels read, with TransformerLens' shapes.

``W_Q[n_heads, d_model, d_head]`` and ``mlp.W_in[d_model, d_mlp]`` are the shapes users index,
but matrix products read weights fastest as ``nn.Linear`` keeps them, ``[out, in]``: float32
kernels take either order at about the same speed, while bfloat16 and float16 on the CPU run
about ten times slower on ``[in, out]``. Rather than keeping converted copies (which go stale
when a weight is edited in place and cost memory), each such parameter is stored in the
kernel's order and shown in the user's shape: the kernel reads a view of the parameter's own
memory, so the parameter is the only copy of the weight and every edit, however it is made, is
what the next forward pass computes with.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Order = tuple[int, ...]  # memory order as a permutation: W.permute(order) is contiguous
LINEAR = (1, 0)  # [in, out] matrices stored as nn.Linear's [out, in]
HEADS_IN = (0, 2, 1)  # W_Q/K/V [head, d_model, d_head] stored as [head, d_head, d_model]
HEADS_OUT = (2, 0, 1)  # W_O [head, d_head, d_model] stored as [d_model, head, d_head]


def stored_as(W: torch.Tensor, order: Order) -> torch.Tensor:
    """``W`` (same shape and values) with its memory laid out as ``W.permute(order)``."""
    inverse = tuple(order.index(axis) for axis in range(len(order)))
    return W.permute(order).contiguous().permute(inverse)


def is_stored_as(W: torch.Tensor, order: Order) -> bool:
    return W.permute(order).is_contiguous()


def keep_kernel_layouts(module: nn.Module, layouts: dict[str, Order | Callable[[torch.Tensor], Order]]) -> None:
    """Lay out ``module``'s parameters as ``layouts`` says (an order, or a function of the
    parameter giving one), now and after every ``load_state_dict`` (which with ``assign=True``
    installs a checkpoint's tensors as they come). Anything else that replaces a parameter still
    computes correctly, only without the free view. The table lives on the module, so a deep
    copy restores its own parameters."""
    module._kernel_layouts = dict(layouts)
    restore_kernel_layouts(module)
    module.register_load_state_dict_post_hook(restore_kernel_layouts)


def restore_kernel_layouts(module: nn.Module, *_) -> None:
    for name, order in module._kernel_layouts.items():
        param = getattr(module, name)
        wanted = order(param) if callable(order) else order
        if not is_stored_as(param, wanted):
            param.data = stored_as(param.data, wanted)
