"""HookedWhisper: Whisper as a TransformerLens ``HookedRootModule``.

The architecture in one page: log-mel [batch, n_mels, 3000] -> two convolutions + sinusoidal
positions -> encoder blocks -> LayerNorm -> ``hook_encoder_out`` [batch, 1500, d_model]. The
decoder embeds tokens plus learned positions, runs blocks of causal self-attention,
cross-attention to the encoder output and an MLP, applies a LayerNorm and reads logits through
the (tied) token embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import nn

from hooked_whisper.audio import AudioInput
from hooked_whisper.cache import WhisperActivationCache
from hooked_whisper.components import AudioEmbed, DecoderBlock, EncoderBlock, LayerNorm, PosEmbed, TokenEmbed
from hooked_whisper.config import GenerationConfig, HookedWhisperConfig
from hooked_whisper.decoding import entry_points
from hooked_whisper.hook_layout import (
    AUDIO_FRONT_END,
    ENCODER_STREAM,
    TEXT_STREAM,
    WHISPER_NAMING,
    HookLayout,
    hook_point,
)
from hooked_whisper.hooked_audio_model import HookedAudioModel, decoding, serialised
from hooked_whisper.inputs import AudioFeatures, TokensInput, rows_per_clip, window_features
from hooked_whisper.kv_cache import DecoderCache, heads_first
from hooked_whisper.tokenizer import WhisperTokenizer, bundled_vocabulary


class HookedWhisper(HookedAudioModel):
    OPT_IN_FLAGS = ("use_attn_result", "use_split_qkv_input", "use_cross_kv_input")
    hook_naming = WHISPER_NAMING
    has_cross_attention = True
    audio_route = "decoder reads the encoder output through cross-attention"

    def __init__(
        self,
        cfg: HookedWhisperConfig,
        tokenizer: WhisperTokenizer | None = None,
        generation_config: GenerationConfig | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer or WhisperTokenizer(bundled_vocabulary(cfg.d_vocab), cfg.d_vocab)
        self.generation_config = generation_config or GenerationConfig.standard(cfg.d_vocab)

        # Each hook's axes are declared where it is made; its stack and unit come from the stream
        # its module is placed on (the decoder's tokens unless placed elsewhere), its layer from its block.
        TEXT_STREAM.holds(self)
        front_end, encoder = AUDIO_FRONT_END.holds, ENCODER_STREAM.holds
        self.hook_mel = front_end(hook_point(pos_axis=2, unit="mel_frame"))  # [batch, n_mels, 3000]
        self.encoder_embed = front_end(AudioEmbed(cfg))
        self.encoder_blocks = encoder(nn.ModuleList([EncoderBlock(cfg) for _ in range(cfg.n_encoder_layers)]))
        self.encoder_ln_final = encoder(LayerNorm(cfg))
        self.hook_encoder_out = encoder(hook_point())  # [batch, audio_pos, d_model]: what cross-attention reads

        self.hook_tokens = hook_point()  # [batch, pos]
        self.embed = TokenEmbed(cfg)
        self.hook_embed = hook_point(writes_residual=True)  # [batch, pos, d_model]
        self.pos_embed = PosEmbed(cfg)
        self.hook_pos_embed = hook_point(writes_residual=True)  # [batch, pos, d_model]
        self.decoder_blocks = nn.ModuleList([DecoderBlock(cfg) for _ in range(cfg.n_decoder_layers)])
        self.decoder_ln_final = LayerNorm(cfg)

        self.init_weights()
        self.setup()

    def init_weights(self, std: float = 0.02) -> None:
        """The shared random init, then the decoder's learned positions."""
        super().init_weights(std)
        if not self.pos_embed.W_pos.is_meta:
            nn.init.normal_(self.pos_embed.W_pos, std=std)

    # ------------------------------------------------------------------ weights, TransformerLens style
    @property
    def W_U(self) -> Float[torch.Tensor, "d_model d_vocab"]:
        """The unembedding, tied to the token embedding (a view, not a copy)."""
        return self.embed.W_E.T

    # ------------------------------------------------------------------ tokens and text
    @property
    def special(self):
        """Special-token ids: ``model.special.eot``, ``.sot``, ``.no_timestamps``, ``.languages``..."""
        return self.tokenizer.special

    def to_tokens(
        self, text: str, prepend_prompt: bool = True, language: str | None = None
    ) -> Int[torch.Tensor, "1 pos"]:
        """Tokens of ``text``, after the default transcription prompt unless ``prepend_prompt=False``."""
        ids = self.tokenizer.encode(text)
        if prepend_prompt:
            ids = self.prompt_tokens(language) + ids
        return torch.tensor([ids], device=self.device)

    def to_string(self, tokens: torch.Tensor | Sequence[int], skip_special: bool = True) -> str | list[str]:
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 2:
            return [self.tokenizer.decode(row, skip_special) for row in tokens]
        return self.tokenizer.decode(tokens, skip_special)

    def to_str_tokens(self, tokens: torch.Tensor | Sequence[int]) -> list[str]:
        return [self.tokenizer.token_text(int(t)) for t in torch.as_tensor(tokens).flatten()]

    def prompt_tokens(
        self, language: str | None = None, task: str = "transcribe", timestamps: bool = False
    ) -> list[int]:
        """The decoder prompt: ``[sot, language, task, notimestamps]`` (English-only: ``[sot, notimestamps]``)."""
        return self.tokenizer.prompt_ids(self.cfg.is_multilingual, language, task, timestamps)

    # ------------------------------------------------------------------ audio in
    def to_mel(
        self, audio: AudioInput | AudioFeatures, sample_rate: int | None = None, allow_long: bool = False
    ) -> AudioFeatures:
        """``AudioFeatures``: log-mel ``[batch, n_mels, 3000]`` (``.mel``) of one 30 s window per
        clip and the frames each clip's audio fills (``.n_frames``), from anything
        ``hooked_whisper.audio.audio_clips`` reads (arrays at ``sample_rate``, 16 kHz unless told)
        or a ready log-mel (all of it audio). Clips over 30 s are refused (``transcribe`` takes
        any length), unless ``allow_long`` asks for their first 30 s."""
        return window_features(self, audio, sample_rate, allow_long)

    # ------------------------------------------------------------------ the forward pass
    @serialised
    def encode(
        self, audio: AudioInput | AudioFeatures, sample_rate: int | None = None
    ) -> Float[torch.Tensor, "batch audio_pos d_model"]:
        features = self.to_mel(audio, sample_rate)
        return self.encode_from(features, 0, self.encoder_embed(self.hook_mel(features.mel)))

    @serialised
    def encode_from(
        self, features: AudioFeatures, layer: int, resid: Float[torch.Tensor, "batch audio_pos d_model"]
    ) -> Float[torch.Tensor, "batch audio_pos d_model"]:
        """The rest of ``encode`` from the stream entering encoder block ``layer`` (``features``
        is unused here: Whisper's blocks read every position)."""
        for block in self.encoder_blocks[layer:]:
            resid, _ = block(resid)
        return self.finish_encoder(resid)

    @serialised
    def finish_encoder(
        self, resid: Float[torch.Tensor, "batch audio_pos d_model"]
    ) -> Float[torch.Tensor, "batch audio_pos d_model"]:
        """From the last encoder block's output to what cross-attention reads."""
        return self.hook_encoder_out(self.encoder_ln_final(resid))

    @serialised
    def new_decoder_cache(self, encoder_out: Float[torch.Tensor, "batch audio_pos d_model"]) -> DecoderCache:
        """Cross-attention K/V of every decoder layer (their hooks fire now), and an empty KV cache."""
        return DecoderCache(
            cross_kv=[heads_first(block.cross_kv(encoder_out)) for block in self.decoder_blocks],
            self_kv=[None] * self.cfg.n_decoder_layers,
        )

    @serialised
    def decode(
        self,
        tokens: Int[torch.Tensor, "batch pos"],
        encoder_out: Float[torch.Tensor, "batch audio_pos d_model"] | None = None,
        cache: DecoderCache | None = None,
    ) -> Float[torch.Tensor, "batch pos d_vocab"]:
        """Decoder logits. With ``cache`` (from ``new_decoder_cache``), ``tokens`` continue the
        positions already in it and the cache is extended in place. The encoder output of one
        clip serves every row of ``tokens``: its cross-attention keys and values are computed
        once and shared."""
        if cache is None:
            if encoder_out is None:
                raise ValueError("decode needs the encoder output, or a DecoderCache built from it")
            cache = self.new_decoder_cache(encoder_out)
            if encoder_out.shape[0] == 1 < tokens.shape[0]:
                cache = cache.for_rows(tokens.shape[0])
        # Hooks that address decoder positions read where this call starts (a KV-cached step).
        with decoding(cache.position, cache.pad is not None):
            tokens = self.hook_tokens(tokens)
            positions, self_mask = cache.positions(tokens.shape[1]), cache.self_attention_mask(tokens.shape[1])
            pos_embed = self.pos_embed(tokens, cache.position, positions)
            resid = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(pos_embed)
            for i, block in enumerate(self.decoder_blocks):
                resid, cache.self_kv[i] = block(resid, cache.cross_kv[i], cache.self_kv[i], self_mask)
            return self.decoder_ln_final(resid) @ self.W_U

    @serialised
    def forward(
        self,
        audio: AudioInput | AudioFeatures,
        tokens: TokensInput | None = None,
        sample_rate: int | None = None,
        greedy_tokens: bool = False,
    ) -> Float[torch.Tensor, "batch pos d_vocab"]:
        """Logits ``[batch, pos, d_vocab]`` of ``tokens`` given ``audio``. Tokens are required (as
        in openai-whisper and TransformerLens): a pass that silently decoded first would hide a
        generation. ``greedy_tokens=True`` asks for one (``run_with_cache(audio)`` does), decoded
        from this pass's own encoder output, so the encoder runs once."""
        if tokens is None and not greedy_tokens:
            raise TypeError(
                "forward needs tokens: pass model(audio, tokens), or call model.run_with_cache(audio) "
                "(which decodes the greedy transcript first) or model.generate(audio) to get them"
            )
        if tokens is not None and greedy_tokens:
            raise ValueError("greedy_tokens=True decodes the tokens itself: pass tokens or greedy_tokens, not both")
        mel = self.to_mel(audio, sample_rate)
        encoder_out = self.encode(mel)
        return self.decode(self.tokens_for(mel, tokens, encoder_out), encoder_out)

    def tokens_for(
        self, mel: AudioFeatures, tokens: TokensInput | None, encoder_out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``tokens`` checked, one row per mel (one row is broadcast); ``None``: the prompt plus each
        clip's greedy transcript (from ``encoder_out`` when it is already computed)."""
        if tokens is None:
            return entry_points.greedy_tokens(self, self.encode(mel) if encoder_out is None else encoder_out)
        return rows_per_clip(self.check_tokens(tokens), mel.shape[0])

    # ------------------------------------------------------------------ what the toolkit asks of a model
    def position_count(self, unit: str) -> int:
        """How many positions an audio-side hook has in ``unit`` (see ``hook_layout``)."""
        return {"mel_frame": self.cfg.n_frames, "audio_position": self.cfg.n_audio_ctx}[unit]

    def layer_count(self, stack: str) -> int:
        stack = self._stack_of(stack)
        return self.cfg.n_encoder_layers if stack == "encoder" else self.cfg.n_decoder_layers

    def head_count(self, where: str | HookLayout) -> int:
        self._stack_of(where)  # checks a stack name
        return self.cfg.n_heads  # Whisper's encoder and decoder have as many heads

    def blocks_of(self, stack: str) -> nn.ModuleList:
        return self.encoder_blocks if self._stack_of(stack) == "encoder" else self.decoder_blocks

    def probe_tokens(self) -> list[list[int]]:
        """The decoder input that probes read at ``prompt_end``: the transcription prompt
        (English for multilingual models rather than a detected language)."""
        return [self.prompt_tokens("en" if self.cfg.is_multilingual else None)]

    def prompt_length(self, tokens: torch.Tensor) -> int:
        """How many of one row's ``tokens`` are the prompt (the special tokens before the text)."""
        return int(((tokens > self.special.eot) & (tokens < self.special.timestamp_begin)).sum())

    def real_length(self, tokens: torch.Tensor) -> int:
        """One row's length without its end-of-text padding."""
        real = (tokens != self.special.eot).nonzero()
        return int(real.max()) + 1 if len(real) else 1

    # ------------------------------------------------------------------ hooks
    def run_with_cache(  # type: ignore[override]
        self,
        audio: AudioInput | AudioFeatures,
        tokens: TokensInput | None = None,
        names_filter: str | list[str] | Callable[[str], bool] | None = None,
        sample_rate: int | None = None,
        **kwargs: Any,
    ) -> tuple[Float[torch.Tensor, "batch pos d_vocab"], WhisperActivationCache]:
        """Logits and a cache of every hooked activation (or those ``names_filter`` selects).
        With ``tokens=None`` the decoder runs on the prompt plus the greedy transcript (without
        the final end-of-text, so the last position predicts it); ``cache["hook_tokens"]`` has
        the tokens used. ``cache.encoder`` and ``cache.decoder`` are TransformerLens-style views
        (``blocks.{l}`` names) for ``accumulated_resid``, ``decompose_resid`` and friends.
        """
        self.check_names_filter(names_filter)
        # Without tokens, forward decodes greedily from the encoder output it has just computed;
        # the teacher-forced pass runs last, so the cache holds its activations.
        logits, cache_dict = super().run_with_cache(
            self.to_mel(audio, sample_rate), tokens, greedy_tokens=tokens is None, names_filter=names_filter, **kwargs
        )
        return logits, WhisperActivationCache(cache_dict, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))

    # ------------------------------------------------------------------ thin bindings (the work is in decoding)
    generate = entry_points.generate
    detect_language = entry_points.detect_language
    transcribe = entry_points.transcribe_audio

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        tokenizer: str | Path | None = None,
        **cfg_overrides: Any,
    ) -> HookedWhisper:
        """Load real weights: a bundled model name (``"tiny.en"``, ``"base"``), a Hugging Face
        repo id (``"openai/whisper-small"``) or a local path to a Hugging Face folder, an openai
        ``.pt`` file or a CTranslate2 folder. ``cfg_overrides`` sets the opt-in hook flags,
        e.g. ``use_attn_result=True``."""
        from weights_conversion import load_checkpoint

        ckpt = load_checkpoint(name_or_path, tokenizer=tokenizer)
        cfg = HookedWhisperConfig(**{**ckpt.config.to_dict(), **cfg_overrides})
        parts = (ckpt.state_dict, cfg, ckpt.tokenizer, ckpt.generation_config)
        return cls.from_state_dict(*parts, name_or_path=name_or_path, device=device, dtype=dtype)
