"""The decoding settings a checkpoint ships with (Hugging Face ``generation_config.json``, or the
CTranslate2 ``config.json``): which tokens are never sampled, and which heads align text to audio."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hooked_whisper.tokenizer import ASSETS, SpecialTokens


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
        # As the Hub's Whisper configs do: task defaults to transcribe (language left to detection).
        out["forced_decoder_ids"] = (
            [[1, None], [2, special.transcribe]] if is_multilingual else [[1, special.no_timestamps]]
        )
        if is_multilingual:
            out["lang_to_id"] = {f"<|{code}|>": i for code, i in special.languages.items()}
            out["task_to_id"] = {"transcribe": special.transcribe, "translate": special.translate}
        return out
