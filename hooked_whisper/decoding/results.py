"""What a transcription returns: its segments, words and windows. Their own module, so that
transcription and word timing (which fills ``Segment.words``) both read them without importing
each other."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Word:
    word: str
    start: float
    end: float
    probability: float


@dataclass
class Segment:
    id: int
    seek: int  # mel frame where its window started
    start: float  # seconds
    end: float
    text: str
    tokens: list[int]  # text and timestamp tokens
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] | None = None


@dataclass
class Window:
    """One decoded 30 s window, kept whether or not it produced segments."""

    start: float  # seconds
    end: float
    no_speech_prob: float
    avg_logprob: float
    compression_ratio: float
    temperature: float  # of the attempt that was kept
    skipped: bool  # judged silent: no segments were made from it
    looped: bool = False  # every attempt looped: the text was cut after the loop's first copy


@dataclass
class Transcript:
    text: str
    tokens: list[int]  # every segment's tokens in order (timestamps included when predicted)
    language: str | None = None
    segments: list[Segment] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict:
        return asdict(self)
