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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import nn
from transformer_lens.hook_points import HookPoint

from hooked_whisper.audio import (
    HOP_LENGTH,
    N_SAMPLES,
    SAMPLE_RATE,
    AudioInput,
    audio_clips,
    check_mel,
    is_single_clip,
    log_mel_spectrogram,
    pad_or_trim,
)
from hooked_whisper.cache import WhisperActivationCache
from hooked_whisper.components import AudioEmbed, DecoderBlock, EncoderBlock, LayerNorm, PosEmbed, TokenEmbed
from hooked_whisper.config import GenerationConfig, HookedWhisperConfig
from hooked_whisper.hook_layout import WHISPER_NAMING, HookLayout, layout_of
from hooked_whisper.hooked_audio_model import HookedAudioModel, decoding, serialised
from hooked_whisper.kv_cache import DecoderCache, heads_first
from hooked_whisper.tokenizer import WhisperTokenizer, bundled_vocabulary

if TYPE_CHECKING:
    from hooked_whisper.decoding.search import DecodingOptions

TokensInput = torch.Tensor | Sequence[int] | Sequence[Sequence[int]] | str


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

        self.hook_mel = HookPoint()  # [batch, n_mels, 3000]
        self.encoder_embed = AudioEmbed(cfg)
        self.encoder_blocks = nn.ModuleList([EncoderBlock(cfg) for _ in range(cfg.n_encoder_layers)])
        self.encoder_ln_final = LayerNorm(cfg)
        self.hook_encoder_out = HookPoint()  # [batch, audio_pos, d_model]: what cross-attention reads

        self.hook_tokens = HookPoint()  # [batch, pos]
        self.embed = TokenEmbed(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.pos_embed = PosEmbed(cfg)
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.decoder_blocks = nn.ModuleList([DecoderBlock(cfg) for _ in range(cfg.n_decoder_layers)])
        self.decoder_ln_final = LayerNorm(cfg)

        self.init_weights()
        self.setup()
        self.hook_layouts: dict[str, HookLayout] = {name: layout_of(name) for name in self.hook_dict}

    def init_weights(self, std: float = 0.02) -> None:
        """The shared random init, then the decoder's learned positions."""
        super().init_weights(std)
        if not self.pos_embed.W_pos.is_meta:
            nn.init.normal_(self.pos_embed.W_pos, std=std)

    # ------------------------------------------------------------------ weights, TransformerLens style
    @property
    def W_E(self) -> Float[torch.Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_U(self) -> Float[torch.Tensor, "d_model d_vocab"]:
        """The unembedding, tied to the token embedding (a view, not a copy)."""
        return self.embed.W_E.T

    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.W_E.dtype

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
            ids = self.prompt(language) + ids
        return torch.tensor([ids], device=self.device)

    def to_string(self, tokens: torch.Tensor | Sequence[int], skip_special: bool = True) -> str | list[str]:
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 2:
            return [self.tokenizer.decode(row, skip_special) for row in tokens]
        return self.tokenizer.decode(tokens, skip_special)

    def to_str_tokens(self, tokens: torch.Tensor | Sequence[int]) -> list[str]:
        return [self.tokenizer.token_text(int(t)) for t in torch.as_tensor(tokens).flatten()]

    def prompt(self, language: str | None = None, task: str = "transcribe", timestamps: bool = False) -> list[int]:
        """The decoder prompt: ``[sot, language, task, notimestamps]`` (English-only: ``[sot, notimestamps]``)."""
        s = self.special
        ids = [s.sot]
        if self.cfg.is_multilingual:
            if language is None:
                raise ValueError(
                    "a multilingual model needs a language for its prompt: pass language='en' (or "
                    "another code), or let transcribe() detect it"
                )
            if language not in s.languages:
                raise ValueError(f"unknown language {language!r}; known: {', '.join(sorted(s.languages))}")
            if task not in ("transcribe", "translate"):
                raise ValueError(f"task must be 'transcribe' or 'translate', not {task!r}")
            ids += [s.languages[language], s.transcribe if task == "transcribe" else s.translate]
        elif language not in (None, "en") or task != "transcribe":
            raise ValueError("this English-only model only transcribes English (language='en', task='transcribe')")
        if not timestamps:
            ids.append(s.no_timestamps)
        return ids

    # ------------------------------------------------------------------ audio in
    def to_mel(
        self, audio: AudioInput, sample_rate: int | None = None, allow_long: bool = False
    ) -> Float[torch.Tensor, "batch n_mels frames"]:
        """Log-mel features ``[batch, n_mels, 3000]`` of one 30 s window per clip.

        ``audio`` follows the contract of ``hooked_whisper.audio.audio_clips`` (a path, a
        waveform, a batch, a list of either; arrays at ``sample_rate``, 16 kHz unless told), or is
        a ready log-mel ``[batch, n_mels, 3000]``. Waveforms are zero-padded to 30 s in the audio
        domain. Longer clips are refused (``transcribe`` takes any length), unless ``allow_long``
        asks for their first 30 s.
        """
        mel = self._ready_mel(audio)
        if mel is not None:
            return mel
        if self.cfg.n_frames != N_SAMPLES // HOP_LENGTH:
            raise ValueError(
                f"this model's encoder reads {self.cfg.n_frames} mel frames, not the 3000 of a 30 s "
                f"waveform; pass a log-mel [batch, {self.cfg.n_mels}, {self.cfg.n_frames}] instead of audio"
            )
        waveforms = audio_clips(audio, sample_rate)
        for i, w in enumerate(waveforms):
            if w.shape[-1] > N_SAMPLES and not allow_long:
                raise ValueError(
                    f"clip {i} lasts {w.shape[-1] / SAMPLE_RATE:.2f} s, over the 30 s window one "
                    "forward pass sees; use model.transcribe() for long audio, or cut it into 30 s "
                    "pieces (nothing is truncated silently)"
                )
        batch = torch.stack([pad_or_trim(w) for w in waveforms]).to(self.device)
        return log_mel_spectrogram(batch, self.cfg.n_mels).to(self.dtype)

    def _ready_mel(self, audio: AudioInput) -> torch.Tensor | None:
        """``audio`` as a ``[batch, n_mels, n_frames]`` log-mel if it is one, else None. A 3-D
        array, or a 2-D one shaped like a mel of either official width, must fit this model."""
        if not isinstance(audio, (np.ndarray, torch.Tensor)):
            return None
        shape, expected = tuple(audio.shape), (self.cfg.n_mels, self.cfg.n_frames)
        looks_like_mel = len(shape) == 3 or (
            len(shape) == 2 and shape[1] == self.cfg.n_frames and shape[0] in (80, 128)
        )
        if not looks_like_mel:
            return None
        if shape[-2:] != expected:
            raise ValueError(
                f"a log-mel input for this model is [batch, {expected[0]}, {expected[1]}]; got shape {shape}"
                + (" (this model takes 128 mel bins)" if shape[-2] == 80 and expected[0] == 128 else "")
                + (" (this model takes 80 mel bins)" if shape[-2] == 128 and expected[0] == 80 else "")
            )
        mel = check_mel(torch.as_tensor(audio))
        return (mel if mel.ndim == 3 else mel.unsqueeze(0)).to(self.device, self.dtype)

    def _is_single_clip(self, audio: AudioInput) -> bool:
        """A path, a 1-D waveform, one multi-channel clip or a 2-D mel is one clip (results come
        unwrapped); lists and batched arrays are batches."""
        if isinstance(audio, (np.ndarray, torch.Tensor)) and tuple(audio.shape) == (self.cfg.n_mels, self.cfg.n_frames):
            return True  # one mel (shape only: the caller has already converted and checked it)
        return is_single_clip(audio)

    # ------------------------------------------------------------------ the forward pass
    @serialised
    def encode(
        self, audio: AudioInput, sample_rate: int | None = None
    ) -> Float[torch.Tensor, "batch audio_pos d_model"]:
        mel = self.hook_mel(self.to_mel(audio, sample_rate))
        resid = self.encoder_embed(mel)
        for block in self.encoder_blocks:
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
        audio: AudioInput,
        tokens: TokensInput | None = None,
        sample_rate: int | None = None,
        greedy_tokens: bool = False,
    ) -> Float[torch.Tensor, "batch pos d_vocab"]:
        """Logits ``[batch, pos, d_vocab]`` of ``tokens`` given ``audio``. Tokens are required (as
        in openai-whisper and TransformerLens): a forward pass that silently decoded first would
        hide a generation inside what reads as one pass. ``greedy_tokens=True`` asks for that
        generation explicitly (``run_with_cache(audio)`` does): the prompt plus each clip's greedy
        transcript, decoded from this pass's own encoder output, so the encoder runs once."""
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
        self, mel: torch.Tensor, tokens: TokensInput | None, encoder_out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``tokens`` as a checked ``[batch, pos]`` tensor for these mels (one row is broadcast);
        ``None`` means the prompt plus each clip's greedy transcript (decoded from
        ``encoder_out`` when it is already computed)."""
        if tokens is None:
            from hooked_whisper.decoding.search import DecodingOptions, decode_window, padded_tokens

            with torch.no_grad():
                encoder_out = self.encode(mel) if encoder_out is None else encoder_out
                results = decode_window(self, encoder_out, DecodingOptions())
                return padded_tokens(results, self.special.eot, include_eot=False).to(self.device)
        tokens = self.check_tokens(tokens)
        if tokens.shape[0] == 1 and mel.shape[0] > 1:
            tokens = tokens.expand(mel.shape[0], -1)
        if tokens.shape[0] != mel.shape[0]:
            raise ValueError(f"{mel.shape[0]} clips but {tokens.shape[0]} token sequences")
        return tokens

    def check_tokens(self, tokens: TokensInput) -> Int[torch.Tensor, "batch pos"]:
        """Token ids as a ``[batch, pos]`` tensor on the model's device, or a clear error."""
        if isinstance(tokens, str):
            return self.to_tokens(tokens)
        if isinstance(tokens, (list, tuple)) and len(tokens) == 0:
            raise ValueError("tokens are empty: give at least the start-of-transcript token (model.prompt())")
        tokens = torch.as_tensor(tokens, device=self.device)
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"tokens must be integer ids, got {tokens.dtype}")
        if tokens.ndim not in (1, 2):
            raise ValueError(f"tokens are [pos] or [batch, pos]; got shape {tuple(tokens.shape)}")
        if tokens.shape[-1] == 0:
            raise ValueError("tokens are empty: give at least the start-of-transcript token (model.prompt())")
        outside = (tokens < 0) | (tokens >= self.cfg.d_vocab)
        if outside.any():
            raise ValueError(
                f"token id {int(tokens[outside][0])} is outside this model's vocabulary of {self.cfg.d_vocab} ids "
                f"(0..{self.cfg.d_vocab - 1})"
            )
        return tokens if tokens.ndim == 2 else tokens.unsqueeze(0)

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
        return [self.prompt("en" if self.cfg.is_multilingual else None)]

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
        audio: AudioInput,
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

    # ------------------------------------------------------------------ generation and transcription
    @torch.no_grad()
    @serialised
    def generate(
        self,
        audio: AudioInput,
        options: DecodingOptions | None = None,
        *,
        seed: int | None = None,
        fwd_hooks: list | None = None,
        sample_rate: int | None = None,
        **overrides: Any,
    ) -> Int[torch.Tensor, "batch pos"]:
        """Decode one 30 s window per clip; returns prompt + generated tokens ``[batch, pos]``,
        each row ending with end-of-text and padded with it, ready for ``run_with_cache``.

        ``options`` is a ``DecodingOptions``; keywords (``language``, ``beam_size``,
        ``temperature``, ``max_new_tokens``...) override its fields, which are declared there
        only. Greedy by default (token for token what Hugging Face ``generate`` writes, with or
        without ``timestamps``); ``beam_size`` runs openai-whisper's beam search,
        ``temperature > 0`` samples (``best_of`` samples, the most likely kept; ``seed`` makes it
        repeatable). ``fwd_hooks`` apply at every step; the language is detected per clip when
        not given.
        """
        from hooked_whisper.decoding.search import DecodingOptions, decode_window, padded_tokens

        options = DecodingOptions.merged(options, overrides)
        options.check(self)
        generator = None if seed is None else torch.Generator(self.device).manual_seed(seed)
        mel = self.to_mel(audio, sample_rate)
        with self.hooks(fwd_hooks=fwd_hooks or []):
            results = decode_window(self, self.encode(mel), options, generator)
        return padded_tokens(results, self.special.eot).to(self.device)

    @torch.no_grad()
    @serialised
    def detect_language(
        self, audio: AudioInput, sample_rate: int | None = None
    ) -> dict[str, float] | list[dict[str, float]]:
        """P(language) for each clip (from its first 30 s), most likely first."""
        from hooked_whisper.decoding.search import language_probs

        if not self.cfg.is_multilingual:
            raise ValueError("this English-only model has no language tokens to detect a language with")
        mel = self.to_mel(audio, sample_rate, allow_long=True)
        probs = language_probs(self, self.new_decoder_cache(self.encode(mel)))
        ranked = [dict(sorted(p.items(), key=lambda kv: -kv[1])) for p in probs]
        return ranked[0] if self._is_single_clip(audio) else ranked

    @torch.no_grad()
    @serialised
    def transcribe(
        self,
        audio: AudioInput,
        language: str | None = None,
        task: str = "transcribe",
        *,
        timestamps: bool = True,
        word_timestamps: bool = False,
        batch_size: int = 1,
        fallback: str = "loop-aware",
        fwd_hooks: list | None = None,
        sample_rate: int | None = None,
        **options: Any,
    ):
        """Transcribe audio of any length, as openai-whisper's ``transcribe`` does: 30 s
        windows in sequence, temperature fallback, no-speech skipping, previous text as prompt.

        Returns a ``Transcript`` (``.text``, ``.tokens``, ``.segments``, ``.language``) for one
        clip, a list for several. ``batch_size`` clips are decoded together, each with its own
        windows, previous text and fallback (greedy text is the same as one by one).
        ``fallback="loop-aware"`` stops a looping attempt at once and moves to the next
        temperature; ``"openai"`` runs openai's algorithm exactly. ``fwd_hooks`` apply to every
        forward pass (as ``with model.hooks(...)`` does). Other options (``temperature``,
        ``beam_size``, ``best_of``, ``compression_ratio_threshold``, ``logprob_threshold``,
        ``no_speech_threshold``, ``condition_on_previous_text``, ``initial_prompt``,
        ``max_new_tokens``, ``stop_on_loop``, ``seed``, ``progress``) are those of
        ``hooked_whisper.decoding.transcribe``.
        """
        from hooked_whisper.decoding.transcribe import transcribe

        if language is not None or task != "transcribe":
            self.prompt(language or "en", task)  # an unknown language or task is reported before any audio work
        mels = self._long_form_mels(audio, sample_rate)
        with self.hooks(fwd_hooks=fwd_hooks or []):
            results = transcribe(
                self,
                mels,
                language=language,
                task=task,
                timestamps=timestamps,
                word_timestamps=word_timestamps,
                batch_size=batch_size,
                fallback=fallback,
                **options,
            )
        return results[0] if self._is_single_clip(audio) else results

    def _long_form_mels(self, audio: AudioInput, sample_rate: int | None) -> list[torch.Tensor]:
        """Per clip, the log-mel of the whole waveform followed by 30 s of silence (openai's
        long-form features); a ready 30 s mel gets 3000 zero frames appended instead."""
        mel = self._ready_mel(audio)
        if mel is not None:
            return [torch.nn.functional.pad(m, (0, self.cfg.n_frames)) for m in mel]
        return [
            log_mel_spectrogram(torch.nn.functional.pad(w.to(self.device), (0, N_SAMPLES)), self.cfg.n_mels).to(
                self.dtype
            )
            for w in audio_clips(audio, sample_rate)
        ]

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
        return cls.from_state_dict(
            ckpt.state_dict,
            cfg,
            ckpt.tokenizer,
            ckpt.generation_config,
            name_or_path=name_or_path,
            device=device,
            dtype=dtype,
        )
