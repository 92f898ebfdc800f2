"""The shape of a Whisper model, read from any of the checkpoint formats we load, and the decoding
settings a checkpoint ships with."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from hooked_whisper.tokenizer import ASSETS, SpecialTokens


@dataclass
class HookedWhisperConfig:
    """Architecture hyper-parameters plus the switches for the opt-in hooks.

    Every official Whisper shares ``d_head = 64``, an MLP four times ``d_model``, 1500 audio
    positions (30 s after the stride-2 convolution) and 448 text positions; the variants differ
    in width, depth (encoder and decoder depths may differ: large-v3-turbo is 32/4, distil
    models 32/2), mel bins (80, or 128 from large-v3 on) and vocabulary size.
    """

    d_model: int
    n_heads: int
    n_encoder_layers: int
    n_decoder_layers: int
    n_mels: int = 80
    d_vocab: int = 51865
    d_head: int = 64
    d_mlp: int | None = None
    n_audio_ctx: int = 1500
    n_text_ctx: int = 448
    layer_norm_eps: float = 1e-5
    # Opt-in hooks, as in TransformerLens: they cost memory and time, so they are off by default.
    use_attn_result: bool = False  # attn.hook_result: each head's output in d_model space
    use_split_qkv_input: bool = False  # hook_{q,k,v}_input: a copy of the block input per head
    use_cross_kv_input: bool = False  # hook_cross_{q,k,v}_input: same, for cross-attention

    def __post_init__(self) -> None:
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if self.n_heads * self.d_head != self.d_model:
            raise ValueError(
                f"n_heads * d_head must equal d_model, got {self.n_heads} * {self.d_head} != {self.d_model}"
            )

    @property
    def n_frames(self) -> int:
        """Mel frames the encoder takes: two per audio position (conv2 has stride 2)."""
        return 2 * self.n_audio_ctx

    @property
    def is_multilingual(self) -> bool:
        # English-only checkpoints have the GPT-2 vocabulary plus specials: 51864 entries.
        return self.d_vocab >= 51865

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], **overrides: Any) -> HookedWhisperConfig:
        """From a Hugging Face ``config.json`` (``WhisperConfig``)."""
        enc_heads, dec_heads = cfg["encoder_attention_heads"], cfg["decoder_attention_heads"]
        if enc_heads != dec_heads:
            raise ValueError(
                f"encoder and decoder head counts differ ({enc_heads} vs {dec_heads}); no official "
                "Whisper does this and HookedWhisper assumes one head count"
            )
        if cfg.get("encoder_ffn_dim", 4 * cfg["d_model"]) != cfg.get("decoder_ffn_dim", 4 * cfg["d_model"]):
            raise ValueError("encoder_ffn_dim and decoder_ffn_dim differ; HookedWhisper assumes one d_mlp")
        if cfg.get("activation_function", "gelu") != "gelu":
            raise ValueError(
                f"activation_function={cfg['activation_function']!r}: HookedWhisper computes Whisper's exact "
                "(erf) GELU and implements no other activation"
            )
        if cfg.get("scale_embedding", False):
            raise ValueError("scale_embedding=True is not a Whisper setting; refusing to guess its meaning")
        return cls(
            d_model=cfg["d_model"],
            n_heads=enc_heads,
            n_encoder_layers=cfg["encoder_layers"],
            n_decoder_layers=cfg["decoder_layers"],
            n_mels=cfg["num_mel_bins"],
            d_vocab=cfg["vocab_size"],
            d_head=cfg["d_model"] // enc_heads,
            d_mlp=cfg.get("encoder_ffn_dim", 4 * cfg["d_model"]),
            n_audio_ctx=cfg.get("max_source_positions", 1500),
            n_text_ctx=cfg.get("max_target_positions", 448),
            **overrides,
        )

    def to_hf_config(self) -> dict[str, Any]:
        """The ``config.json`` a Hugging Face ``WhisperForConditionalGeneration`` needs."""
        return {
            "architectures": ["WhisperForConditionalGeneration"],
            "model_type": "whisper",
            "d_model": self.d_model,
            "encoder_attention_heads": self.n_heads,
            "decoder_attention_heads": self.n_heads,
            "encoder_layers": self.n_encoder_layers,
            "decoder_layers": self.n_decoder_layers,
            "num_hidden_layers": self.n_encoder_layers,
            "encoder_ffn_dim": self.d_mlp,
            "decoder_ffn_dim": self.d_mlp,
            "num_mel_bins": self.n_mels,
            "vocab_size": self.d_vocab,
            "max_source_positions": self.n_audio_ctx,
            "max_target_positions": self.n_text_ctx,
            "activation_function": "gelu",
            "scale_embedding": False,
            "tie_word_embeddings": True,
        }

    @classmethod
    def from_openai_dims(cls, dims: dict[str, int], **overrides: Any) -> HookedWhisperConfig:
        """From the ``dims`` dict of an openai-whisper ``.pt`` checkpoint."""
        if dims["n_audio_state"] != dims["n_text_state"] or dims["n_audio_head"] != dims["n_text_head"]:
            raise ValueError(f"encoder and decoder widths or head counts differ in dims {dims}")
        return cls(
            d_model=dims["n_audio_state"],
            n_heads=dims["n_audio_head"],
            n_encoder_layers=dims["n_audio_layer"],
            n_decoder_layers=dims["n_text_layer"],
            n_mels=dims["n_mels"],
            d_vocab=dims["n_vocab"],
            d_head=dims["n_audio_state"] // dims["n_audio_head"],
            n_audio_ctx=dims["n_audio_ctx"],
            n_text_ctx=dims["n_text_ctx"],
            **overrides,
        )

    def to_openai_dims(self) -> dict[str, int]:
        return {
            "n_mels": self.n_mels,
            "n_audio_ctx": self.n_audio_ctx,
            "n_audio_state": self.d_model,
            "n_audio_head": self.n_heads,
            "n_audio_layer": self.n_encoder_layers,
            "n_vocab": self.d_vocab,
            "n_text_ctx": self.n_text_ctx,
            "n_text_state": self.d_model,
            "n_text_head": self.n_heads,
            "n_text_layer": self.n_decoder_layers,
        }


@dataclass
class HookedQwen2AudioConfig:
    """An audio LLM in the Qwen2-Audio family: a Whisper-shaped audio encoder (``audio``, whose
    decoder fields are unused), a linear projector, and a Qwen2 decoder-only language model.

    The language model's names follow TransformerLens: ``n_layers``, ``n_key_value_heads``
    (grouped-query attention), ``d_mlp`` of the gated MLP, ``rope_theta`` and ``eps`` of RMSNorm.
    ``rope_type`` is one of ``ROPE_TYPES`` (transformers' names), stretched by ``rope_factor``:
    "linear" divides every rotary frequency by it, "dynamic" (NTK-aware) raises the base once a
    call's tokens run past ``n_ctx``.
    """

    ROPE_TYPES: ClassVar[tuple[str, ...]] = ("default", "linear", "dynamic")

    audio: HookedWhisperConfig
    d_model: int
    n_layers: int
    n_heads: int
    n_key_value_heads: int
    d_mlp: int
    d_vocab: int
    d_head: int | None = None
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    eps: float = 1e-6
    n_ctx: int = 32768
    audio_token_id: int = 151646
    eos_token_ids: tuple[int, ...] = (151643, 151645)  # <|endoftext|>, <|im_end|>
    use_split_qkv_input: bool = False  # blocks.{l}.hook_{q,k,v}_input: the block input per head
    normalization_type: str = "RMS"  # read by TransformerLens' cache methods

    def __post_init__(self) -> None:
        if isinstance(self.audio, dict):
            self.audio = HookedWhisperConfig(**self.audio)
        if self.d_head is None:
            self.d_head = self.d_model // self.n_heads
        self.eos_token_ids = tuple(self.eos_token_ids)
        if self.rope_type not in self.ROPE_TYPES:
            raise ValueError(
                f"rope_type={self.rope_type!r} is not implemented: HookedQwen2Audio computes the "
                f"{', '.join(repr(t) for t in self.ROPE_TYPES)} rotary embeddings (a model that needs another "
                "would give wrong logits, so it is refused)"
            )
        if self.rope_type != "default" and not self.rope_factor >= 1.0:
            raise ValueError(f"rope_factor={self.rope_factor!r}: a {self.rope_type!r} rotary scaling factor is >= 1")

    @property
    def n_audio_tokens(self) -> int:
        """Audio positions after the encoder's average pooling by two (750 for 30 s)."""
        return self.audio.n_audio_ctx // 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> HookedQwen2AudioConfig:
        """From a Hugging Face ``Qwen2AudioConfig`` dictionary (``config.json``)."""
        audio, text = cfg["audio_config"], cfg["text_config"]
        if audio.get("activation_function", "gelu") != "gelu" or audio.get("scale_embedding", False):
            raise ValueError("the audio encoder must use exact GELU and no embedding scale, as Qwen2-Audio does")
        if text.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={text['hidden_act']!r}: only Qwen2's SiLU-gated MLP is implemented")
        if text.get("use_sliding_window", False):
            raise ValueError("use_sliding_window=True is not implemented; every Qwen2-Audio release leaves it off")
        # transformers >= 5 writes one ``rope_parameters``; older configs a ``rope_theta`` and a
        # ``rope_scaling`` (or null) whose kind is under "type" or "rope_type".
        rope = {"rope_theta": text.get("rope_theta", 1e6), **(text.get("rope_scaling") or {})}
        rope.update(text.get("rope_parameters") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
            raise ValueError("partial_rotary_factor != 1 is not implemented: Qwen2 rotates every dimension of a head")
        if rope_type != "default" and "factor" not in rope:
            raise ValueError(f"rope scaling {rope_type!r} without a 'factor' in the text config: add the factor")
        if text.get("tie_word_embeddings", False):
            raise ValueError("tie_word_embeddings=True: Qwen2-Audio's unembedding is its own matrix")
        heads = audio["encoder_attention_heads"]
        eos = cfg.get("eos_token_id") or text.get("eos_token_id") or cls.eos_token_ids
        return cls(
            audio=HookedWhisperConfig(
                d_model=audio["d_model"],
                n_heads=heads,
                n_encoder_layers=audio["encoder_layers"],
                n_decoder_layers=0,
                n_mels=audio["num_mel_bins"],
                d_head=audio["d_model"] // heads,
                d_mlp=audio["encoder_ffn_dim"],
                n_audio_ctx=audio.get("max_source_positions", 1500),
                d_vocab=0,
            ),
            d_model=text["hidden_size"],
            n_layers=text["num_hidden_layers"],
            n_heads=text["num_attention_heads"],
            n_key_value_heads=text.get("num_key_value_heads", text["num_attention_heads"]),
            d_mlp=text["intermediate_size"],
            d_vocab=text["vocab_size"],
            d_head=text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"],
            rope_theta=float(rope["rope_theta"]),
            rope_type=rope_type,
            rope_factor=float(rope.get("factor", 1.0)),
            eps=text.get("rms_norm_eps", 1e-6),
            n_ctx=text.get("max_position_embeddings", 32768),
            audio_token_id=cfg.get("audio_token_index", cfg.get("audio_token_id", 151646)),
            eos_token_ids=tuple(eos) if isinstance(eos, (list, tuple)) else (eos,),
        )


@dataclass
class GenerationConfig:
    suppress_tokens: list[int] = field(default_factory=list)  # masked at every step
    begin_suppress_tokens: list[int] = field(default_factory=list)  # masked at the first step only
    alignment_heads: list[tuple[int, int]] = field(default_factory=list)  # (decoder layer, head)
    max_length: int = 448  # prompt plus generated tokens

    @classmethod
    def standard(cls, d_vocab: int) -> GenerationConfig:
        """The suppress lists every official checkpoint of this vocabulary ships with (bundled in
        ``hooked_whisper/assets``), for checkpoints that come without a generation config. No
        alignment heads: word timing then uses the upper half of the decoder's heads."""
        table = json.loads((ASSETS / "suppress_tokens.json").read_text())
        if d_vocab == 51866:  # large-v3: one more language token, every id from 50358 on moves up
            lists = table["51865"]
            shift = {k: [t + 1 if t >= 50358 else t for t in v] for k, v in lists.items()}
            return cls(**shift)
        if str(d_vocab) not in table:
            return cls()
        return cls(**table[str(d_vocab)])

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> GenerationConfig:
        return cls(
            suppress_tokens=list(cfg.get("suppress_tokens") or []),
            begin_suppress_tokens=list(cfg.get("begin_suppress_tokens") or []),
            alignment_heads=[tuple(x) for x in cfg.get("alignment_heads") or []],  # type: ignore[misc]
            max_length=int(cfg.get("max_length") or 448),
        )

    def to_hf_dict(self, special: SpecialTokens, is_multilingual: bool) -> dict[str, Any]:
        """A ``generation_config.json`` that Hugging Face ``generate`` accepts for this model."""
        out: dict[str, Any] = {
            "decoder_start_token_id": special.sot,
            "bos_token_id": special.eot,
            "eos_token_id": special.eot,
            "pad_token_id": special.eot,
            "max_length": self.max_length,
            "suppress_tokens": self.suppress_tokens,
            "begin_suppress_tokens": self.begin_suppress_tokens,
            "alignment_heads": [list(x) for x in self.alignment_heads],
            "no_timestamps_token_id": special.no_timestamps,
            "prev_sot_token_id": special.sot_prev,
            "is_multilingual": is_multilingual,
        }
        if is_multilingual:
            out["lang_to_id"] = {f"<|{code}|>": i for code, i in special.languages.items()}
            out["task_to_id"] = {"transcribe": special.transcribe, "translate": special.translate}
        return out
