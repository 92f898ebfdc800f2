"""How to decode one 30 s window (``DecodingOptions``), in a module of its own that imports no
torch: the command line builds its decoding flags from these fields (``cli_fields``), and
``hooked-whisper --help`` answers without loading torch."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, get_args, get_type_hints

if TYPE_CHECKING:
    from hooked_whisper.model import HookedWhisper


def option(default: Any, help: str, cli: bool = True, choices: tuple[str, ...] | None = None) -> Any:  # noqa: A002
    """A ``DecodingOptions`` field with its description, said once: the command line builds its
    flags from the fields with ``cli`` set (``cli_fields``)."""
    return field(default=default, metadata={"help": help, "cli": cli, "choices": choices})


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode one 30 s window, declared once: ``generate`` takes these fields as keywords
    (merged with ``dataclasses.replace``), so no caller re-lists them. Frozen: a run's options
    cannot change under it, and one instance can be shared between calls."""

    language: str | None = option(None, "language code (default: detected per clip on multilingual models)")
    task: str = option("transcribe", "transcribe, or translate into English", choices=("transcribe", "translate"))
    timestamps: bool = option(False, "predict timestamp tokens", cli=False)  # long-form decoding always does
    temperature: float = option(0.0, "0: greedy or beam search; above 0: sampling (one number: no fallback)")
    beam_size: int | None = option(None, "beam search with this many beams instead of greedy decoding")
    patience: float | None = option(None, "beam search: collect beam_size * patience finished sequences")
    best_of: int | None = option(None, "sampling: keep the most likely of this many samples")
    length_penalty: float | None = option(None, "in [0, 1]; default: rank by log-probability / length")
    max_new_tokens: int | None = option(None, "tokens per window (default: up to the decoder's 448-token context)")
    # Whisper: previous text, after <|startofprev|>; Qwen2-Audio: the chat prompt. Long-form
    # transcription writes each window's prompt itself.
    prompt: str | list[int] | None = option(None, "the text (or ids) before the transcript", cli=False)
    prefix: str | list[int] | None = option(None, "forced start of the transcript", cli=False)
    max_initial_timestamp: float | None = option(1.0, "latest first timestamp, in seconds")
    stop_on_loop: bool | Callable[[list[int]], bool] = option(False, "stop a repeating greedy run", cli=False)

    @classmethod
    def merged(cls, options: DecodingOptions | None, overrides: dict[str, Any]) -> DecodingOptions:
        """``options`` (the defaults when None) with ``overrides`` applied; an unknown keyword
        is a TypeError that names the fields there are."""
        if options is not None and not isinstance(options, cls):
            raise TypeError(
                f"generate's second argument is a DecodingOptions, not {type(options).__name__}: pass token ids "
                "as prompt=... (or tokens to run_with_cache / forward for a teacher-forced pass)"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(
                f"unknown decoding option(s) {', '.join(unknown)}; "
                f"DecodingOptions fields are: {', '.join(sorted(known))}"
            )
        return replace(options or cls(), **overrides)

    def check(self, model: HookedWhisper) -> None:
        if self.beam_size is not None and self.best_of is not None:
            raise ValueError("beam_size and best_of cannot be used together: beam search is for temperature 0")
        if self.best_of is not None and self.temperature == 0:
            raise ValueError("best_of needs temperature > 0 (greedy decoding has only one candidate)")
        if self.patience is not None and self.beam_size is None:
            raise ValueError("patience is a beam-search setting: give beam_size too")
        if self.beam_size is not None and self.temperature != 0:
            raise ValueError("beam search runs at temperature 0; use best_of for sampling")
        if self.beam_size is not None and self.stop_on_loop:
            raise ValueError("stop_on_loop works with greedy decoding and sampling, not beam search")
        if self.length_penalty is not None and not 0 <= self.length_penalty <= 1:
            raise ValueError(f"length_penalty must lie in [0, 1], got {self.length_penalty}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        for name in ("beam_size", "best_of", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.language is not None and not isinstance(self.language, str):
            raise ValueError(
                f"language is one code for every clip (e.g. 'en'), not {type(self.language).__name__} "
                f"{self.language!r}: for clips in different languages call once per language, or leave it "
                "out to detect each clip's"
            )
        if self.language is not None:
            model.prompt_tokens(self.language, self.task)  # raises a clear error for unknown codes
        for name in ("prompt", "prefix"):
            ids = getattr(self, name)
            if isinstance(ids, (list, tuple)):
                bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < model.cfg.d_vocab]
                if bad:
                    raise ValueError(
                        f"{name} holds token id {bad[0]!r}, outside this model's vocabulary of {model.cfg.d_vocab} "
                        f"ids (0..{model.cfg.d_vocab - 1}); pass text, or ids from model.to_tokens"
                    )


TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# What ``transcribe`` decodes with unless told: timestamps on (the seek needs them) and openai's
# temperature schedule. ``temperature`` may be one number or the schedule tried in turn.
LONG_FORM_OPTIONS = DecodingOptions(timestamps=True, temperature=TEMPERATURES)  # type: ignore[arg-type]


def cli_fields() -> list[tuple[Field, type]]:
    """The fields the command line sets, each with the one type its flag parses (``int`` for
    ``int | None``)."""
    hints = get_type_hints(DecodingOptions)
    out = []
    for f in fields(DecodingOptions):
        if f.metadata["cli"]:
            kinds = [t for t in get_args(hints[f.name]) or (hints[f.name],) if t is not type(None)]
            assert len(kinds) == 1, f"{f.name}: a command-line option has one type"
            out.append((f, kinds[0]))
    return out
