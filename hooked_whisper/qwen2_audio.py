"""HookedQwen2Audio: an audio LLM (Qwen2-Audio) as a TransformerLens ``HookedRootModule``.

The architecture in one page: log-mel [batch, 128, 3000] -> Whisper's encoder (the same
components as HookedWhisper, with padding frames hidden from self-attention) -> average pooling
by two -> LayerNorm -> ``hook_encoder_out`` [batch, 750, d_audio] -> a linear projector ->
``hook_audio_embeds`` [batch, 750, d_model]. The language model is decoder-only: the prompt's
audio placeholder tokens (one per real audio position, 40 ms each) take the audio embeddings
in place of their own, and causal self-attention reads them; there is no cross-attention.

Hook names follow HookedWhisper for the audio side (``encoder_blocks.{l}...``) and
TransformerLens' decoder-only models for the language model (``blocks.{l}...``, ``ln_final``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import nn
from transformer_lens import ActivationCache

from hooked_whisper.audio import (
    HOP_LENGTH,
    AudioInput,
    audio_clips,
)
from hooked_whisper.cache import ExplainedCache
from hooked_whisper.components import AudioEmbed, EncoderBlock, LayerNorm, TokenEmbed
from hooked_whisper.components.attention import KeyValue
from hooked_whisper.components.blocks import LanguageModelBlock
from hooked_whisper.components.embeddings import Unembed
from hooked_whisper.components.layout import LINEAR, keep_kernel_layouts
from hooked_whisper.components.rms_norm import RMSNorm
from hooked_whisper.components.rotary_attention import rotary_frequencies, rotary_tables
from hooked_whisper.config import HookedQwen2AudioConfig
from hooked_whisper.decoding_options import DecodingOptions
from hooked_whisper.hook_layout import (
    AUDIO_FRONT_END,
    ENCODER_STREAM,
    POOLED_AUDIO,
    QWEN2_AUDIO_NAMING,
    TEXT_STREAM,
    HookLayout,
    hook_point,
)
from hooked_whisper.hooked_audio_model import HookedAudioModel, decoding, serialised
from hooked_whisper.inputs import AudioFeatures, check_window, encoder_positions, rows_per_clip, window_mels

SYSTEM_PROMPT = "You are a helpful assistant."
AUDIO_SLOT = "<|audio_bos|><|AUDIO|><|audio_eos|>"


@dataclass
class LanguageModelCache:
    """Rotated keys and values of every layer for the positions decoded so far."""

    kv: list[KeyValue | None]
    position: int = 0

    @classmethod
    def empty(cls, n_layers: int) -> LanguageModelCache:
        return cls([None] * n_layers)


class Qwen2AudioActivationCache(ExplainedCache):
    """TransformerLens' cache; ``cache.decoder`` is the language model (already named
    ``blocks.{l}``), so the toolkit's lenses read it as they read HookedWhisper's decoder."""

    @property
    def decoder(self) -> ActivationCache:
        return self


@dataclass
class TextTokenizer:
    """The checkpoint's ``tokenizer.json`` (byte-level BPE with the chat and audio specials)."""

    path: Path
    _tokenizer: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(self.path))

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special)


class HookedQwen2Audio(HookedAudioModel):
    OPT_IN_FLAGS = ("use_split_qkv_input",)
    hook_naming = QWEN2_AUDIO_NAMING
    has_cross_attention = False
    audio_route = "language model reads audio embeddings, not cross-attention"

    def __init__(self, cfg: HookedQwen2AudioConfig, tokenizer: TextTokenizer | None = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        a = cfg.audio

        # Each hook's axes are declared where it is made; its stack and unit come from the stream its
        # module is placed on (the language model's tokens unless placed elsewhere), its layer from its block.
        TEXT_STREAM.holds(self)
        front_end, encoder, pooled = AUDIO_FRONT_END.holds, ENCODER_STREAM.holds, POOLED_AUDIO.holds
        self.hook_mel = front_end(hook_point(pos_axis=2, unit="mel_frame"))  # [batch, n_mels, 3000]
        self.encoder_embed = front_end(AudioEmbed(a))
        self.encoder_blocks = encoder(nn.ModuleList([EncoderBlock(a) for _ in range(a.n_encoder_layers)]))
        self.hook_pooled = pooled(hook_point())  # [batch, n_audio_ctx // 2, d_audio]: pairs of positions averaged
        self.encoder_ln_final = pooled(LayerNorm(a))
        self.hook_encoder_out = pooled(hook_point())  # [batch, n_audio_ctx // 2, d_audio]
        self.W_audio_proj = nn.Parameter(torch.empty(a.d_model, cfg.d_model))
        self.b_audio_proj = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_audio_embeds = pooled(hook_point())  # [batch, n_audio_ctx // 2, d_model]: what the placeholders get

        self.hook_tokens = hook_point()  # [batch, pos]
        self.embed = TokenEmbed(cfg, tied=False)
        # [batch, pos, d_model]: token embeddings, before audio is put in
        self.hook_embed = hook_point(writes_residual=True)
        self.blocks = nn.ModuleList([LanguageModelBlock(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = RMSNorm(cfg.d_model, cfg.eps)
        self.unembed = Unembed(cfg)
        keep_kernel_layouts(self, {"W_audio_proj": LINEAR})  # nn.Linear's [out, in]

        self.init_weights()
        self.setup()

    @property
    def W_U(self) -> Float[torch.Tensor, "d_model d_vocab"]:
        """The language-model head (not tied to the embedding)."""
        return self.unembed.W_U

    # ------------------------------------------------------------------ text
    def _need_tokenizer(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise ValueError(
                "this model has no tokenizer (its folder had no tokenizer.json): pass token ids instead of text"
            )
        return self.tokenizer

    def to_tokens(self, text: str) -> Int[torch.Tensor, "1 pos"]:
        return torch.tensor([self._need_tokenizer().encode(text)], device=self.device)

    def to_string(self, tokens: torch.Tensor | Sequence[int], skip_special: bool = True) -> str | list[str]:
        """The text of ``[pos]`` ids, or one text per row of ``[batch, pos]`` (as HookedWhisper's)."""
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 2:
            return [self._need_tokenizer().decode(row.tolist(), skip_special) for row in tokens]
        return self._need_tokenizer().decode(tokens.tolist(), skip_special)

    def to_str_tokens(self, tokens: torch.Tensor | Sequence[int]) -> list[str]:
        """Each token id as text on its own (special tokens included), as HookedWhisper's."""
        tokenizer = self._need_tokenizer()
        return [tokenizer.decode([int(t)], skip_special=False) for t in torch.as_tensor(tokens).flatten()]

    def chat_prompt(self, instruction: str = "Transcribe the audio.", n_audio_tokens: int = 1) -> str:
        """The chat prompt the Qwen2-Audio processor writes for one clip and one instruction, with
        the audio placeholder repeated ``n_audio_tokens`` times (as the processor expands it)."""
        audio = AUDIO_SLOT.replace("<|AUDIO|>", "<|AUDIO|>" * n_audio_tokens)
        return (
            f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nAudio 1: {audio}\n"
            f"{instruction}<|im_end|>\n<|im_start|>assistant\n"
        )

    def prompt_tokens(self, instruction: str = "Transcribe the audio.", n_audio_tokens: int = 1) -> list[int]:
        """The ids of ``chat_prompt(instruction, n_audio_tokens)``: what the language model reads."""
        return self._need_tokenizer().encode(self.chat_prompt(instruction, n_audio_tokens))

    # ------------------------------------------------------------------ audio
    def to_mel(self, audio: AudioInput | AudioFeatures, sample_rate: int | None = None) -> AudioFeatures:
        """Log-mel windows of 30 s and the number of audio frames in each (``AudioFeatures``).

        ``audio`` follows ``hooked_whisper.audio.audio_clips`` (paths, waveforms, lists; arrays at
        ``sample_rate``). A clip over 30 s is refused, not truncated. A bare log-mel is refused
        too: it does not say how many of its frames are audio, which changes the result."""
        if isinstance(audio, AudioFeatures):
            return audio.to(self.device, self.dtype)
        if isinstance(audio, (torch.Tensor, np.ndarray)) and (
            audio.ndim == 3
            or (audio.ndim == 2 and audio.shape[0] in (80, 128) and audio.shape[1] == 2 * self.cfg.audio.n_audio_ctx)
        ):  # a [n_mels, 3000] mel would otherwise read as n_mels clips of 3000 samples
            raise ValueError(
                "a log-mel alone does not say how many of its frames are audio (the encoder hides the "
                "padding): pass the waveform, or AudioFeatures(mel, n_frames)"
            )
        waveforms = audio_clips(audio, sample_rate)
        check_window(waveforms, allow_empty=False)
        mel = window_mels(waveforms, self.cfg.audio.n_mels, self.device, self.dtype)
        n_frames = torch.tensor([math.ceil(w.shape[-1] / HOP_LENGTH) for w in waveforms])
        return AudioFeatures(mel, n_frames.to(self.device))

    @serialised
    def encode(
        self, audio: AudioInput | AudioFeatures, sample_rate: int | None = None
    ) -> Float[torch.Tensor, "batch audio_pos d_model"]:
        """Audio embeddings for every pooled position; a clip's first ``n_audio_tokens`` of them
        are what its placeholders receive."""
        features = self.to_mel(audio, sample_rate)
        return self.encode_from(features, 0, self.encoder_embed(self.hook_mel(features.mel)))

    @serialised
    def encode_from(
        self, features: AudioFeatures, layer: int, resid: Float[torch.Tensor, "batch audio_pos d_audio"]
    ) -> Float[torch.Tensor, "batch audio_token d_model"]:
        """The rest of ``encode`` from the stream entering encoder block ``layer``; ``features``
        (``to_mel``'s, for the same clips) say which positions are padding."""
        real = encoder_positions(features.n_frames)
        key_mask = None
        if bool((real < resid.shape[1]).any()):
            key_mask = torch.arange(resid.shape[1], device=resid.device)[None, :] < real[:, None]
        for block in self.encoder_blocks[layer:]:
            resid, _ = block(resid, key_mask=key_mask)
        return self.finish_encoder(resid)

    @serialised
    def finish_encoder(
        self, resid: Float[torch.Tensor, "batch audio_pos d_audio"]
    ) -> Float[torch.Tensor, "batch audio_token d_model"]:
        """From the last encoder block's output to what the language model reads: pooling by two,
        the final LayerNorm, the projector."""
        pooled = self.hook_pooled(F.avg_pool1d(resid.transpose(1, 2), 2, 2).transpose(1, 2))
        encoder_out = self.hook_encoder_out(self.encoder_ln_final(pooled))
        return self.hook_audio_embeds(encoder_out @ self.W_audio_proj + self.b_audio_proj)

    # ------------------------------------------------------------------ the language model
    def audio_slot(self, tokens: Int[torch.Tensor, "*batch pos"]) -> torch.Tensor:
        """Bool, the shape of ``tokens`` (``[pos]`` or ``[batch, pos]``): each row's audio slot, its
        first run of placeholders. A placeholder after it is one the model generated: it reads its
        own embedding, as in ``generate``."""
        placeholder = tokens == self.cfg.audio_token_id
        ended = (placeholder.cummax(-1).values & ~placeholder).cummax(-1).values
        return placeholder & ~ended

    def _insert_audio(self, embeds: torch.Tensor, tokens: torch.Tensor, audio_embeds: torch.Tensor) -> torch.Tensor:
        """Each row's audio slot (``audio_slot``), in order, takes that row's first audio embeddings
        (one clip's serve every row)."""
        audio_embeds = audio_embeds.expand(tokens.shape[0], -1, -1) if audio_embeds.shape[0] == 1 else audio_embeds
        slots = self.audio_slot(tokens)
        counts = slots.sum(-1)
        if int(counts.max()) > audio_embeds.shape[1]:
            raise ValueError(
                f"a prompt has {int(counts.max())} audio placeholders, more than the {audio_embeds.shape[1]} "
                "audio positions of a 30 s window"
            )
        taken = torch.arange(audio_embeds.shape[1], device=tokens.device)[None, :] < counts[:, None]
        out = embeds.clone()
        out[slots] = audio_embeds[taken].to(embeds.dtype)
        return out

    @serialised
    def decode(
        self,
        tokens: Int[torch.Tensor, "batch pos"],
        audio_embeds: Float[torch.Tensor, "batch audio_pos d_model"] | None = None,
        cache: LanguageModelCache | None = None,
    ) -> Float[torch.Tensor, "batch pos d_vocab"]:
        """Language-model logits. ``audio_embeds`` fill the placeholders of a prompt; with
        ``cache`` the tokens continue the positions already in it, which is extended in place."""
        cache = cache if cache is not None else LanguageModelCache.empty(self.cfg.n_layers)
        with decoding(cache.position):  # read by hooks that address positions
            tokens = self.hook_tokens(tokens)
            resid = self.hook_embed(self.embed(tokens))
            # A placeholder the model generated itself (a cached step without audio) reads its own
            # embedding, as transformers' generate does; a prompt's placeholders need the audio.
            if audio_embeds is not None or cache.position == 0:
                if bool((tokens == self.cfg.audio_token_id).any()):
                    if audio_embeds is None:
                        raise ValueError(
                            "these tokens hold audio placeholders: pass the audio embeddings (model.encode)"
                        )
                    resid = self._insert_audio(resid, tokens, audio_embeds)
            positions = torch.arange(cache.position, cache.position + tokens.shape[1], device=tokens.device)
            inv_freq = rotary_frequencies(self.cfg, cache.position + tokens.shape[1], tokens.device)
            cos, sin = rotary_tables(positions, inv_freq, resid.dtype)
            for i, block in enumerate(self.blocks):
                resid, cache.kv[i] = block(resid, cos, sin, cache.kv[i])
            cache.position += tokens.shape[1]
            return self.unembed(self.ln_final(resid))

    def tokens_for(
        self, features: AudioFeatures, tokens: Any, audio_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``tokens`` (ids or prompt text; default: the transcription prompt) laid out for these
        clips: one placeholder per audio position in its audio slot (``audio_slot``; placeholders
        generated after it are text). A slot of a single placeholder is expanded; any other count
        that does not match the clip is an error."""
        if tokens is None:
            tokens = self.chat_prompt()
        tokens = rows_per_clip(self.check_tokens(tokens), features.shape[0])
        rows = []
        for row, slot, want in zip(tokens, self.audio_slot(tokens), features.n_audio_tokens.tolist()):
            slots = slot.nonzero().flatten()
            if len(slots) == 1 and want != 1:
                at = int(slots[0])
                row = torch.cat([row[:at], row[at : at + 1].expand(want), row[at + 1 :]])
            elif len(slots) != want:
                raise ValueError(
                    f"the prompt has {len(slots)} audio placeholders but the clip gives {want} audio positions: "
                    "write one placeholder (it is expanded) or build it with model.chat_prompt(n_audio_tokens=...)"
                )
            rows.append(row)
        if len({len(r) for r in rows}) > 1:
            raise ValueError("clips of different lengths give prompts of different lengths: run them one at a time")
        return torch.stack(rows)

    @serialised
    def forward(
        self, audio: AudioInput | AudioFeatures, tokens: Any = None, sample_rate: int | None = None
    ) -> Float[torch.Tensor, "batch pos d_vocab"]:
        """Logits ``[batch, pos, d_vocab]`` of the prompt ``tokens`` (default: the transcription
        prompt) with ``audio`` at its placeholders."""
        features = self.to_mel(audio, sample_rate)
        return self.decode(self.tokens_for(features, tokens), self.encode(features))

    def run_with_cache(  # type: ignore[override]
        self, audio: AudioInput | AudioFeatures, tokens: Any = None, sample_rate: int | None = None, **kwargs: Any
    ) -> tuple[torch.Tensor, Qwen2AudioActivationCache]:
        """Logits and every hooked activation (or those ``names_filter`` selects)."""
        self.check_names_filter(kwargs.get("names_filter"))
        logits, cache = super().run_with_cache(self.to_mel(audio, sample_rate), tokens, **kwargs)
        return logits, Qwen2AudioActivationCache(cache, self, not kwargs.get("remove_batch_dim", False))

    @torch.no_grad()
    @serialised
    def generate(
        self,
        audio: AudioInput | AudioFeatures,
        options: DecodingOptions | None = None,
        *,
        seed: int | None = None,
        fwd_hooks: Sequence[tuple[Any, Any]] | None = None,
        sample_rate: int | None = None,
        **overrides: Any,
    ) -> Int[torch.Tensor, "batch pos"]:
        """Greedy continuation of ``options.prompt`` (ids or text; default: the transcription chat
        prompt), reading the audio once and each new token through the key/value cache, up to
        ``max_new_tokens`` (default 64); the same signature as ``HookedWhisper.generate``.
        ``fwd_hooks`` are live at every step. Rows that reach an end token are padded with it.
        Returns prompt + new tokens. Whisper's search options (beam search, sampling, timestamps,
        language and task tokens, a forced prefix) are refused: this decoder is greedy."""
        options = DecodingOptions.merged(options, overrides)
        whisper_only = [
            f.name
            for f in dataclasses.fields(options)
            if f.name not in ("prompt", "max_new_tokens") and getattr(options, f.name) != f.default
        ]
        if whisper_only:
            raise ValueError(
                f"HookedQwen2Audio.generate decodes greedily from a chat prompt: {', '.join(whisper_only)} "
                "are Whisper decoder options (its special tokens and search); set prompt= and max_new_tokens= only"
            )
        max_new_tokens = options.max_new_tokens or 64
        tokens = options.prompt
        features = self.to_mel(audio, sample_rate)
        prompt = self.tokens_for(features, tokens)
        with self.hooks(fwd_hooks=list(fwd_hooks or [])):
            audio_embeds = self.encode(features)
            cache = LanguageModelCache.empty(self.cfg.n_layers)
            logits = self.decode(prompt, audio_embeds, cache)
            eos = torch.tensor(self.cfg.eos_token_ids, device=self.device)
            out, done = prompt, torch.zeros(prompt.shape[0], dtype=torch.bool, device=self.device)
            for step in range(max_new_tokens):
                next_token = logits[:, -1].argmax(-1)
                next_token = torch.where(done, eos[0], next_token)
                out = torch.cat([out, next_token[:, None]], dim=1)
                done |= torch.isin(next_token, eos)
                if bool(done.all()) or step == max_new_tokens - 1:
                    break
                logits = self.decode(next_token[:, None], cache=cache)
        return out

    # ------------------------------------------------------------------ what the toolkit asks of a model
    def position_count(self, unit: str) -> int:
        """How many positions an audio-side hook has in ``unit`` (see ``hook_layout``)."""
        n = self.cfg.audio.n_audio_ctx
        return {"mel_frame": 2 * n, "audio_position": n, "audio_token": n // 2}[unit]

    def real_position_count(self, unit: str, n_samples: int) -> int:
        """What this model's encoder and language model read of a clip of ``n_samples``: its mel
        frames, the encoder positions they give, and the audio tokens the language model receives
        (pooling drops a last encoder position that has no partner)."""
        n_frames = torch.tensor([math.ceil(n_samples / HOP_LENGTH)])
        counts = {
            "mel_frame": n_frames,
            "audio_position": encoder_positions(n_frames),
            "audio_token": AudioFeatures(torch.empty(0), n_frames).n_audio_tokens,
        }
        return int(counts[unit][0])

    def layer_count(self, stack: str) -> int:
        """Blocks of the audio tower ("encoder") or of the language model ("decoder")."""
        return self.cfg.audio.n_encoder_layers if self._stack_of(stack) == "encoder" else self.cfg.n_layers

    def head_count(self, where: str | HookLayout) -> int:
        """Query heads (the language model's key/value groups are ``cfg.n_key_value_heads``)."""
        return self.cfg.audio.n_heads if self._stack_of(where) == "encoder" else self.cfg.n_heads

    def kv_head_count(self, stack: str) -> int:
        """The language model's key/value groups (grouped-query attention); the audio tower's heads."""
        return self.cfg.audio.n_heads if self._stack_of(stack) == "encoder" else self.cfg.n_key_value_heads

    def blocks_of(self, stack: str) -> nn.ModuleList:
        return self.encoder_blocks if self._stack_of(stack) == "encoder" else self.blocks

    def probe_tokens(self) -> None:
        """Probes read the language model on the default transcription prompt alone."""
        return None

    def prompt_length(self, tokens: torch.Tensor) -> int:
        """How many of one row's ``tokens`` are the default transcription prompt (its audio
        placeholders expanded), when the row starts with it, as ``generate`` writes; any other
        row is all prompt (a model without a tokenizer cannot tell)."""
        if self.tokenizer is None:
            return tokens.shape[-1]
        prompt = self.prompt_tokens(n_audio_tokens=int(self.audio_slot(tokens).sum()))
        starts = len(prompt) <= tokens.shape[-1] and tokens[: len(prompt)].tolist() == prompt
        return len(prompt) if starts else tokens.shape[-1]

    def real_length(self, tokens: torch.Tensor) -> int:
        """One row's length without the end tokens that close and pad a generated row."""
        real = (~torch.isin(tokens, torch.tensor(self.cfg.eos_token_ids, device=tokens.device))).nonzero()
        return int(real.max()) + 1 if len(real) else 1

    def transcribe(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Refused: long-form transcription is Whisper's (see the error)."""
        raise ValueError(
            "HookedQwen2Audio.transcribe: long-form transcription seeks through the audio by Whisper's timestamp "
            "tokens, which this chat model has none of; call generate(audio) on clips of up to 30 s (its default "
            "prompt asks for a transcript)"
        )

    def detect_language(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Refused: language detection reads Whisper's language tokens (see the error)."""
        raise ValueError(
            "HookedQwen2Audio.detect_language: Whisper reads the language off its language tokens, which this chat "
            "model has none of; ask in the prompt instead: generate(audio, prompt=model.chat_prompt('What language "
            "is spoken?'))"
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **cfg_overrides: Any,
    ) -> HookedQwen2Audio:
        """Load a Hugging Face Qwen2-Audio checkpoint: a local folder (``config.json``, safetensors
        shards, ``tokenizer.json``) or a Hub repo id such as ``Qwen/Qwen2-Audio-7B-Instruct``
        (downloaded, or read from the local Hub cache when offline). ``cfg_overrides`` sets
        config fields such as the opt-in hook flags, as on ``HookedWhisper.from_pretrained``."""
        from weights_conversion.qwen2_audio import load_qwen2_audio_folder
        from weights_conversion.resolve import download

        path = Path(name_or_path).expanduser()
        folder = path if path.is_dir() else download(str(name_or_path))
        cfg, state_dict, tokenizer = load_qwen2_audio_folder(folder)
        cfg = dataclasses.replace(cfg, **cfg_overrides)
        return cls.from_state_dict(
            state_dict,
            cfg,
            TextTokenizer(tokenizer) if tokenizer else None,
            name_or_path=name_or_path,
            device=device,
            dtype=dtype,
        )
