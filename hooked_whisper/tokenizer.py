"""Special-token ids and text <-> token conversion.

Text goes through the checkpoint's ``tokenizer.json`` (byte-level BPE). Timestamp tokens are
handled here, because several shipped tokenizer files stop at ``<|notimestamps|>`` although the
model's vocabulary runs on through 1501 timestamps (0.00 s to 30.00 s in 0.02 s steps).
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

TIME_PRECISION = 0.02  # seconds per timestamp token
ASSETS = Path(__file__).parent / "assets"
BUNDLED_VOCABULARIES = {51864: "vocab-en.json.gz", 51865: "vocab-multilingual.json.gz"}


def bundled_vocabulary(d_vocab: int) -> Path | None:
    """The vocabulary file shipped with the package for an official vocabulary size (English-only
    or multilingual v1/v2), or None (large-v3's 51,866 ids must come with the checkpoint)."""
    name = BUNDLED_VOCABULARIES.get(d_vocab)
    return ASSETS / name if name else None


_LANGUAGE_TOKEN = re.compile(r"^<\|([a-z]{2,3}|haw)\|>$")


@dataclass
class SpecialTokens:
    """The ids that drive decoding. ``languages`` maps a code such as ``"en"`` to its token id."""

    eot: int
    sot: int
    translate: int
    transcribe: int
    sot_prev: int
    no_speech: int
    no_timestamps: int
    languages: dict[str, int] = field(default_factory=dict)

    @property
    def timestamp_begin(self) -> int:
        return self.no_timestamps + 1

    @classmethod
    def for_vocab_size(cls, d_vocab: int) -> SpecialTokens:
        """The standard layout of each official vocabulary (language codes unnamed)."""
        if d_vocab == 51864:  # English-only
            return cls(
                eot=50256,
                sot=50257,
                translate=50357,
                transcribe=50358,
                sot_prev=50360,
                no_speech=50361,
                no_timestamps=50362,
            )
        if d_vocab in (51865, 51866):  # multilingual; v3 adds one language (yue), shifting the rest
            shift = d_vocab - 51865
            langs = {f"lang{i}": 50259 + i for i in range(99 + shift)}
            return cls(
                eot=50257,
                sot=50258,
                translate=50358 + shift,
                transcribe=50359 + shift,
                sot_prev=50361 + shift,
                no_speech=50362 + shift,
                no_timestamps=50363 + shift,
                languages=langs,
            )
        raise ValueError(f"unknown Whisper vocabulary size {d_vocab}: expected 51864, 51865 or 51866")


class WhisperTokenizer:
    """Wraps a ``tokenizers.Tokenizer`` with Whisper's special tokens and timestamps."""

    def __init__(self, path: str | Path | None, d_vocab: int):
        self.d_vocab = d_vocab
        self.path = Path(path) if path is not None else None
        self._tok = None
        special = SpecialTokens.for_vocab_size(d_vocab)
        if self.path is not None:
            from tokenizers import Tokenizer

            if self.path.suffix == ".gz":
                self._tok = Tokenizer.from_str(gzip.decompress(self.path.read_bytes()).decode())
            else:
                self._tok = Tokenizer.from_file(str(self.path))
            special = self._read_special_tokens(special)
        self.special = special

    def _read_special_tokens(self, default: SpecialTokens) -> SpecialTokens:
        assert self._tok is not None

        def tid(*contents: str) -> int | None:
            for content in contents:
                i = self._tok.token_to_id(content)
                if i is not None:
                    return i
            return None

        found = SpecialTokens(
            eot=tid("<|endoftext|>") or default.eot,
            sot=tid("<|startoftranscript|>") or default.sot,
            translate=tid("<|translate|>") or default.translate,
            transcribe=tid("<|transcribe|>") or default.transcribe,
            sot_prev=tid("<|startofprev|>") or default.sot_prev,
            no_speech=tid("<|nospeech|>", "<|nocaptions|>") or default.no_speech,
            no_timestamps=tid("<|notimestamps|>") or default.no_timestamps,
        )
        if found.no_timestamps != default.no_timestamps:
            raise ValueError(
                f"{self.path} puts <|notimestamps|> at {found.no_timestamps}, but a vocabulary of "
                f"{self.d_vocab} has it at {default.no_timestamps}: is this the checkpoint's tokenizer?"
            )
        if self.d_vocab >= 51865:  # language tokens sit between sot and translate
            for i in range(found.sot + 1, found.translate):
                match = _LANGUAGE_TOKEN.match(self._tok.id_to_token(i) or "")
                if match:
                    found.languages[match.group(1)] = i
        return found

    def prompt_ids(
        self, multilingual: bool, language: str | None = None, task: str = "transcribe", timestamps: bool = False
    ) -> list[int]:
        """The decoder prompt ``[sot, language, task, notimestamps]`` (English-only: ``[sot, notimestamps]``)."""
        s = self.special
        ids = [s.sot]
        if multilingual:
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

    @property
    def has_text_vocabulary(self) -> bool:
        return self._tok is not None

    def _require(self):
        if self._tok is None:
            raise RuntimeError(
                "this model has no tokenizer.json, so it cannot turn text into tokens or back; "
                "load a checkpoint folder that has one, or pass tokenizer=PATH to from_pretrained"
            )
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self._require().encode(text, add_special_tokens=False).ids

    def check_ids(self, ids: Sequence[int]) -> None:
        bad = [i for i in ids if not 0 <= i < self.d_vocab]
        if bad:
            raise ValueError(f"token ids must lie in [0, {self.d_vocab}); got {bad[:5]}")

    def decode(self, tokens: Sequence[int] | torch.Tensor, skip_special: bool = True) -> str:
        """Text of ``tokens``. Timestamps read ``<|1.24|>`` unless ``skip_special``."""
        tok = self._require()
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        self.check_ids(ids)
        pieces: list[str] = []
        run: list[int] = []
        for i in ids:
            if i >= self.special.timestamp_begin:
                pieces.append(tok.decode(run, skip_special_tokens=skip_special))
                run = []
                if not skip_special:
                    pieces.append(self.timestamp_text(i))
            elif skip_special and i >= self.special.eot:
                continue
            else:
                run.append(i)
        pieces.append(tok.decode(run, skip_special_tokens=skip_special))
        return "".join(pieces)

    def text(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``, or "" when the checkpoint came without a text vocabulary (the
        model still decodes token ids)."""
        return self.decode(tokens) if self.has_text_vocabulary else ""

    def token_text(self, token: int) -> str:
        """One token as text, special tokens and timestamps included (for tables and plots)."""
        self.check_ids([token])
        if token >= self.special.timestamp_begin:
            return self.timestamp_text(token)
        tok = self._require()
        if token >= self.special.eot:
            return tok.id_to_token(token) or f"<|{token}|>"
        return tok.decode([token], skip_special_tokens=False)

    def timestamp_text(self, token: int) -> str:
        return f"<|{(token - self.special.timestamp_begin) * TIME_PRECISION:.2f}|>"

    def language_code(self, token: int) -> str:
        for code, i in self.special.languages.items():
            if i == token:
                return code
        raise ValueError(f"token {token} is not a language token")
