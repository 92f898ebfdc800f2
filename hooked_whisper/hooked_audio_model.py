"""What every hooked audio model here shares: hook names checked with a suggestion, hook
return values checked, hooks that never outlive their block, and one caller at a time.

The hooks live on the model: every forward pass, generation, ``hooks()`` block and hook edit
holds the model's lock (``ModelLock``), so a model shared between threads runs one caller at a
time and no caller sees another's hooks. Per-call state (where the running decoder call starts, whether its rows are
left-padded) is not on the model: ``decoding()`` holds it for the call, per thread.
"""

from __future__ import annotations

import difflib
import functools
import math
import sys
import threading
import time
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from hooked_whisper.audio import SAMPLE_RATE
from hooked_whisper.hook_layout import (
    POSITIONS_PER_SECOND,
    HookLayout,
    HookNaming,
    hook_layouts_of,
    is_sae_hook,
    sae_hook_name,
)
from hooked_whisper.inputs import AudioFeatures, TokensInput, check_tokens


@dataclass(frozen=True)
class DecodeCall:
    """The decoder call now running, as hooks that address decoder positions need it: the
    absolute position of its first token (a KV-cached step continues after the ones before) and
    whether its rows are left-padded (then positions differ from row to row)."""

    offset: int = 0
    padded: bool = False


# A ContextVar, not an attribute: each thread (and each nested call) sees its own decoder call.
_NO_DECODE_CALL = DecodeCall()  # frozen: safe to share as the default
_DECODE_CALL: ContextVar[DecodeCall] = ContextVar("decode_call", default=_NO_DECODE_CALL)


@contextmanager
def decoding(offset: int, padded: bool = False) -> Iterator[DecodeCall]:
    """Mark a decoder call from ``offset`` for the hooks that fire inside it."""
    token = _DECODE_CALL.set(call := DecodeCall(offset, padded))
    try:
        yield call
    finally:
        _DECODE_CALL.reset(token)


class ModelLock:
    """The model's lock: re-entrant within a thread; other threads wait their turn.

    Waiting is right while the holder works, but not when the holder is itself parked waiting on
    another thread (a ``Future``, a ``join``, a queue): a worker started inside ``with
    model.hooks()`` (or from a hook) that calls the model would then wait forever on the block
    that waits on it. Python cannot say whom the holder waits on, so a waiter raises once the
    holder has sat in ``threading``'s wait for ``grace_s`` seconds on end (the library never
    waits on threads while holding the lock, so only user code can be parked there); a holder
    that computes, sleeps or does I/O is waited for as long as it takes. Raising in the waiter
    ends the deadlock: the error reaches the holder through its ``Future`` or queue.
    """

    grace_s = 5.0  # far longer than a thread start; short enough that a deadlock is not mistaken for slowness
    _poll_s = 0.05

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._owner: threading.Thread | None = None
        self._depth = 0

    def __enter__(self) -> ModelLock:
        if not self._lock.acquire(blocking=False):
            parked_since = None
            while not self._lock.acquire(timeout=self._poll_s):
                owner = self._owner
                if owner is None or not _parked_in_thread_wait(owner):
                    parked_since = None
                    continue
                parked_since = parked_since or time.monotonic()
                if time.monotonic() - parked_since >= self.grace_s:
                    raise RuntimeError(
                        f"this thread waits for the model, but thread {owner.name!r} holds it (inside `with "
                        f"model.hooks()`, a hook or another model call) while itself waiting on a thread for "
                        f"{self.grace_s:g} s: a thread started there cannot use the model until that block ends, "
                        f"so the two would wait on each other forever. Call the model from the block's own "
                        f"thread, or give each worker its own copy (copy.deepcopy(model))"
                    )
        self._owner = threading.current_thread()
        self._depth += 1
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
        self._lock.release()


def _parked_in_thread_wait(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked in ``threading``'s own waiting code (``Condition.wait``,
    ``Event.wait``, ``join``; futures and queues wait through them)."""
    frame = sys._current_frames().get(thread.ident)  # noqa: SLF001 (documented, for exactly this kind of check)
    return frame is not None and frame.f_code.co_filename == threading.__file__


def serialised(method: Callable) -> Callable:
    """Run ``method`` holding the model's lock (see ``HookedAudioModel.hooks``)."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


def checked(fn: Callable) -> Callable:
    """``fn`` as a forward hook that may return None or a tensor of the shape and dtype it was
    given; anything else is an error naming the hook (not a failure deep inside a later layer)."""

    def hook(x: torch.Tensor, hook: HookPoint):
        out = fn(x, hook=hook)
        if out is not None and not (isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype):
            got = f"shape {tuple(out.shape)}, {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"the hook on {hook.name} returned {got}; a hook returns None or a tensor of the shape "
                f"and dtype it was given (shape {tuple(x.shape)}, {x.dtype})"
            )
        return out

    hook.__name__ = getattr(fn, "__name__", repr(fn))
    return hook


class HookedAudioModel(HookedRootModule, metaclass=ABCMeta):
    """What decoding and the toolkit may call on either family, declared here as abstract
    methods and typed attributes (a family that lacks one cannot be built). Subclasses build
    their modules (each hook point with its axes, each module on its stream) and call
    ``setup()``, which builds ``hook_layouts`` from the module tree; they declare how their
    blocks' hooks are named (``hook_naming``) and whether a decoder reads the audio through
    cross-attention. What a family cannot do is refused at the call, naming the family and why
    (``require_cross_attention``). Shared, written once here: hook-name checks and builders, the
    model's lock (``ModelLock``), ``real_position_count``, and sparse autoencoders spliced by hook
    name (``saes``, ``sae_hook_name``).
    """

    cfg: Any
    tokenizer: Any
    embed: nn.Module  # the token embedding, ``embed.W_E``
    hook_layouts: dict[str, HookLayout]
    hook_naming: HookNaming
    # True when a decoder reads the encoder output through cross-attention (an encoder-decoder
    # such as Whisper); False when the audio enters a language model's own stream as embeddings.
    has_cross_attention: bool = False
    # How the audio reaches the text side, for errors about what this family cannot do.
    audio_route: str = ""
    OPT_IN_FLAGS: tuple[str, ...] = ()  # config switches for hooks that cost memory, as in TransformerLens

    def __init__(self) -> None:
        super().__init__()
        self._lock = ModelLock()

    @property
    def decode_offset(self) -> int:
        """The absolute decoder position where the decoder call now running starts (0 outside one)."""
        return _DECODE_CALL.get().offset

    @property
    def decode_padded(self) -> bool:
        """Whether the rows of the decoder call now running are left-padded (batched transcription)."""
        return _DECODE_CALL.get().padded

    @classmethod
    def from_state_dict(
        cls,
        state_dict: dict[str, torch.Tensor],
        *model_args: Any,
        name_or_path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> Self:
        """The end of every ``from_pretrained``: the modules are built on the meta device (no
        random init to throw away), the checkpoint's tensors are assigned in, and the model is
        moved and set to eval mode (float32 on the CPU unless told)."""
        with torch.device("meta"):
            model = cls(*model_args)
        model.load_state_dict(state_dict, assign=True, strict=True)
        model.name_or_path = str(name_or_path)
        return model.to(device=device or "cpu", dtype=dtype or torch.float32).eval()

    def init_weights(self, std: float = 0.02) -> None:
        """Random weights for a model built from a config alone (checkpoints overwrite them):
        every ``W_*`` matrix but position tables (the audio stem's is fixed sinusoids). A model built
        on the meta device (``from_pretrained``) is left alone: the checkpoint fills it, and
        random init there would import torch's compiler stack (~140 MiB)."""
        if next(self.parameters()).is_meta:
            return
        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1].lstrip("_")
            if leaf.startswith("W_") and leaf != "W_pos":
                nn.init.normal_(p, std=std)

    def setup(self) -> None:
        """TransformerLens' ``setup`` (hook names from the module tree), then ``hook_layouts``
        from the same tree: each hook's declared axes, on the stream and in the block where its
        module sits (``hook_layout.hook_layouts_of``)."""
        super().setup()
        self.hook_layouts = hook_layouts_of(self)
        assert self.hook_layouts.keys() == self.hook_dict.keys(), "every hook point is declared with hook_point()"

    def check_tokens(self, tokens: TokensInput) -> torch.Tensor:
        """Token ids (or text) as a checked ``[batch, pos]`` tensor on the model's device."""
        return check_tokens(tokens, self.cfg.d_vocab, self.device, self.to_tokens)

    def check_names_filter(self, names_filter: Any) -> None:
        """Every name in a ``run_with_cache`` filter given as a string or list must be a hook."""
        if isinstance(names_filter, (str, list)):
            for name in [names_filter] if isinstance(names_filter, str) else names_filter:
                self.check_hook_name(name)

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy and pickle cannot copy a lock
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = ModelLock()

    def check_hook_name(self, name: str) -> None:
        """Raise a ValueError naming the closest valid hooks if ``name`` is not one."""
        if name not in self.hook_dict:
            if is_sae_hook(name):
                raise ValueError(
                    f"no hook named {name!r}: an autoencoder's hooks exist inside `with model.saes({{hook: sae}}):` "
                    "only, while it is spliced in at that hook"
                )
            close = difflib.get_close_matches(name, list(self.hook_dict), n=5, cutoff=0.5)
            hint = f"; closest valid names: {', '.join(close)}" if close else ""
            raise ValueError(f"no hook named {name!r}{hint}. model.hook_dict lists them all")

    # ------------------------------------------------------------------ the contract
    @property
    def W_E(self) -> torch.Tensor:
        """The token embedding ``[d_vocab, d_model]`` (``embed.W_E``)."""
        return self.embed.W_E

    @property
    @abstractmethod
    def W_U(self) -> torch.Tensor:
        """The unembedding ``[d_model, d_vocab]`` (Whisper's is ``W_E.T``, a view)."""

    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.W_E.dtype

    @abstractmethod
    def to_mel(self, audio: Any, sample_rate: int | None = None) -> AudioFeatures:
        """The encoder's input for ``audio``: log-mel windows and the frames each clip's audio
        fills (``AudioFeatures``). ``encode``, ``forward`` and ``tokens_for`` take it."""

    @abstractmethod
    def encode(self, audio: Any, sample_rate: int | None = None) -> torch.Tensor:
        """What the text side reads of the audio: ``[batch, audio_pos, d_model]``."""

    @abstractmethod
    def encode_from(self, features: AudioFeatures, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """``encode`` from the residual stream entering encoder block ``layer`` on (``features``:
        ``to_mel``'s for the same clips): a patch sweep reuses the unpatched stream up to its
        first patched block."""

    @abstractmethod
    def finish_encoder(self, resid: torch.Tensor) -> torch.Tensor:
        """From the last encoder block's output to what ``encode`` returns (path patching reruns it)."""

    @abstractmethod
    def decode(self, tokens: torch.Tensor, encoder_out: torch.Tensor | None = None, cache: Any = None) -> torch.Tensor:
        """Logits ``[batch, pos, d_vocab]``; with a KV ``cache`` the tokens continue it, in place."""

    @abstractmethod
    def tokens_for(self, features: AudioFeatures, tokens: Any, encoder_out: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens`` checked and laid out one row per clip; None: the family's default for a clip."""

    @abstractmethod
    def probe_tokens(self) -> list[list[int]] | None:
        """The decoder input probes read at ``prompt_end`` (None: ``tokens_for``'s default)."""

    @abstractmethod
    def prompt_tokens(self, *args: Any, **kwargs: Any) -> list[int]:
        """The ids of the family's default prompt (Whisper's special tokens; Qwen2-Audio's chat)."""

    @abstractmethod
    def to_tokens(self, text: str) -> torch.Tensor: ...

    @abstractmethod
    def to_string(self, tokens: Any, skip_special: bool = True) -> str | list[str]: ...

    @abstractmethod
    def to_str_tokens(self, tokens: Any) -> list[str]: ...

    @abstractmethod
    def position_count(self, unit: str) -> int:
        """How many positions an audio-side hook has in ``unit`` (see ``hook_layout``)."""

    def real_position_count(self, unit: str, n_samples: int) -> int:
        """How many of the first positions in ``unit`` hold a clip of ``n_samples`` 16 kHz samples
        (the rest is padding up to 30 s): every position that reads any of its audio."""
        return min(math.ceil(n_samples * POSITIONS_PER_SECOND[unit] / SAMPLE_RATE), self.position_count(unit))

    @abstractmethod
    def prompt_length(self, tokens: torch.Tensor) -> int:
        """How many of one row's ``tokens`` are the prompt."""

    @abstractmethod
    def real_length(self, tokens: torch.Tensor) -> int:
        """One row's length without its end padding."""

    @abstractmethod
    def generate(self, audio: Any, options: Any = None, *, seed=None, fwd_hooks=None, sample_rate=None, **overrides):
        """Prompt plus generated tokens ``[batch, pos]``, from one ``DecodingOptions`` plus keyword overrides."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, name_or_path: str | Path, device=None, dtype=None, **cfg_overrides: Any) -> Self:
        """Load a checkpoint; ``cfg_overrides`` set config fields such as the opt-in hook flags."""

    @abstractmethod
    def layer_count(self, stack: str) -> int:
        """How many blocks ``stack`` ("encoder" or "decoder") has."""

    @abstractmethod
    def head_count(self, where: str | HookLayout) -> int:
        """Attention heads per block of a stack ("encoder"/"decoder"), or of the hook ``where``
        describes (the audio front end counts as the encoder)."""

    def kv_head_count(self, stack: str) -> int:
        """Key/value heads per block of ``stack``: ``head_count`` unless grouped-query attention
        shares each key/value head among several query heads."""
        return self.head_count(stack)

    @abstractmethod
    def blocks_of(self, stack: str) -> nn.ModuleList:
        """The blocks of ``stack`` ("encoder" or "decoder")."""

    def hook_name(self, stack: str, layer: int, *leaf: str) -> str:
        """The name of hook ``leaf`` (``hook_resid_post``, ``attn.hook_z``, ``cross_attn.hook_z``,
        ... or its parts: ``"cross_attn", "hook_z"``) in block ``layer`` of ``stack``, checked to
        exist: ``decoder_blocks.{layer}.{leaf}`` in HookedWhisper, ``blocks.{layer}.{leaf}`` in
        HookedQwen2Audio's language model."""
        n_layers = self.layer_count(stack)
        if not 0 <= layer < n_layers:
            raise ValueError(f"{stack} layer {layer} out of range: this model's {stack} has layers 0..{n_layers - 1}")
        name = self.hook_naming.name(stack, layer, *leaf)
        self.check_hook_name(name)
        return name

    def sae_hook_name(self, hook: str, leaf: str = "hook_sae_acts_post") -> str:
        """The name hook ``leaf`` (``hook_sae_acts_post``, ``hook_sae_recons``, ...) has while an
        autoencoder is spliced in at ``hook`` (``model.saes``): ``{hook}.sae.{leaf}``."""
        self.check_hook_name(hook)
        return sae_hook_name(hook, leaf)

    def saes(self, saes: Any, use_error_term: bool = False):
        """``with model.saes({hook: sae}):`` runs the model with each sparse autoencoder's
        reconstruction in place of the activation at its hook (a list of autoencoders that carry
        their ``hook_name`` works too). With ``use_error_term=True`` the error is added back, so
        the forward pass is unchanged while the latents become visible. The autoencoder's hooks
        (``model.sae_hook_name(hook)`` and the other ``SAE_LEAVES``) are model hooks inside the
        block: cache, patch, ablate and steer them. All of it is removed on leaving, even by an
        exception (``hooked_whisper.saes.splice``)."""
        from hooked_whisper.saes.splice import splice_saes

        return splice_saes(self, saes, use_error_term)

    def require_cross_attention(self, what: str) -> None:
        """Refuse, in one line, a tool that needs a decoder with cross-attention on a family without it."""
        if not self.has_cross_attention:
            raise ValueError(f"{what} needs an encoder-decoder model: {type(self).__name__}'s {self.audio_route}")

    @staticmethod
    def _stack_of(where: str | HookLayout) -> str:
        if isinstance(where, HookLayout):
            return "encoder" if where.is_encoder_side else "decoder"
        if where not in ("encoder", "decoder"):
            raise ValueError(f"stack must be 'encoder' or 'decoder', not {where!r}")
        return where

    def hook_layout(self, name: str) -> HookLayout:
        """Which stack and layer ``name`` is on and what its axes hold (positions and their
        unit: mel frames, audio positions or tokens; heads)."""
        self.check_hook_name(name)
        return self.hook_layouts[name]

    def _enable_hook_with_name(self, name: str, hook: Callable, dir: Any):  # noqa: A002 (TransformerLens' signature)
        self.check_hook_name(name)
        super()._enable_hook_with_name(name, hook, dir)

    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False) -> None:  # noqa: A002
        if isinstance(name, str):
            self.check_hook_name(name)
        with self._lock:
            super().add_hook(name, checked(hook) if dir == "fwd" else hook, dir, is_permanent, level, prepend)

    def reset_hooks(self, *args: Any, **kwargs: Any) -> None:
        """TransformerLens' ``reset_hooks``, holding the model's lock: called from another thread
        while a ``hooks()`` block runs, it waits for the block to end instead of stripping it."""
        with self._lock:
            super().reset_hooks(*args, **kwargs)

    def remove_all_hook_fns(self, *args: Any, **kwargs: Any) -> None:
        """TransformerLens' ``remove_all_hook_fns``, holding the model's lock (as ``reset_hooks``)."""
        with self._lock:
            super().remove_all_hook_fns(*args, **kwargs)

    @contextmanager
    def hooks(  # type: ignore[override]
        self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True, clear_contexts: bool = False
    ) -> Iterator[HookedAudioModel]:
        """Hooks for the duration of the block, removed even if it raises.

        The block holds the model's lock, as does every forward pass, generation and
        transcription: a model shared between threads runs one caller at a time, and no caller
        sees another's hooks. (For parallel work use one model per thread or process.) A thread
        started inside the block that calls the model gets a clear error, not a deadlock (see
        ``ModelLock``).
        """
        with self._lock:
            wrapped = [(name, checked(fn)) for name, fn in fwd_hooks]
            with super().hooks(wrapped, list(bwd_hooks), reset_hooks_end, clear_contexts) as model:
                yield model

    @contextmanager
    def opt_in(self, **flags: bool) -> Iterator[HookedAudioModel]:
        """Switch opt-in hooks (``OPT_IN_FLAGS``, e.g. ``use_split_qkv_input``) on or off for the
        duration of the block, holding the model's lock."""
        unknown = set(flags) - set(self.OPT_IN_FLAGS)
        if unknown:
            raise ValueError(f"not an opt-in hook flag: {', '.join(sorted(unknown))}")
        with self._lock:
            old = {name: getattr(self.cfg, name) for name in flags}
            try:
                for name, value in flags.items():
                    setattr(self.cfg, name, value)
                yield self
            finally:
                for name, value in old.items():
                    setattr(self.cfg, name, value)
