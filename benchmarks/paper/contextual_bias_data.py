"""Build the contextual-bias data set offline: sentences in which the audio says one word (the
acoustic word, "lice") where the context predicts another (the contextual word, "rice"), each
with a neutral twin ("The next word is lice now") that shares the target word's audio.

    .venv/bin/python benchmarks/paper/contextual_bias_data.py OUT_DIR [--voices espeak-us,flite-slt] [--limit N]

The items (``data/contextual_bias_items.tsv``) and the synthesis settings (``data/synthesis.json``:
voices, their engines and licences, gaps, the neutral carriers) are data files; the audio is
rebuilt. Each sentence is synthesised in pieces (the text before the word, the word, the text
after), each piece trimmed of its silence and joined with a fixed gap, so that the word's
boundaries are exact and its samples are identical in the sentence and in its neutral twin.

Engines: ``espeak-ng`` and ``flite`` (Debian packages of those names; ``apt-get install
espeak-ng flite``). Writes ``OUT_DIR/{voice}/{id}_{context|neutral}.wav`` and ``OUT_DIR/index.tsv``
(one row per clip: the word's start and end in seconds, the clip's duration, the texts). Clips
already there are kept.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).parent.parent.parent))
from hooked_whisper.audio import load_audio  # noqa: E402

DATA = Path(__file__).parent / "data"
ITEMS = DATA / "contextual_bias_items.tsv"
SETTINGS = DATA / "synthesis.json"
ENGINES = ("espeak-ng", "flite")


@dataclass(frozen=True)
class Item:
    id: str
    pair: str  # the acoustic/contextual pair: the sentence template a bootstrap resamples
    acoustic: str
    contextual: str
    before: str
    after: str

    @property
    def text(self) -> str:
        """The sentence as spoken (with the acoustic word)."""
        return " ".join(p for p in (self.before, self.acoustic, self.after) if p)


def read_items(path: Path = ITEMS) -> list[Item]:
    with open(path) as f:
        items = [Item(**row) for row in csv.DictReader(f, delimiter="\t")]
    for item in items:
        words = set(normal_words(f"{item.before} {item.after}"))
        if item.acoustic in words or item.contextual in words:
            raise ValueError(f"{item.id}: the context itself contains {item.acoustic!r} or {item.contextual!r}")
    return items


def normal_words(text: str) -> list[str]:
    from hooked_whisper.metrics import normalize_text

    return normalize_text(text)


def settings(path: Path = SETTINGS) -> dict:
    return json.loads(path.read_text())


def available_engines() -> list[str]:
    return [e for e in ENGINES if shutil.which(e)]


def synthesise(voice: dict, text: str, sample_rate: int) -> np.ndarray:
    """``text`` spoken by ``voice`` as a float32 waveform at ``sample_rate``."""
    engine = voice["engine"]
    if not shutil.which(engine):
        raise RuntimeError(f"{engine} is not installed: apt-get install {engine} (or choose other --voices)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "piece.wav"
        if engine == "espeak-ng":
            command = ["espeak-ng", "-v", voice["voice"], "-s", str(voice.get("rate", 160)), "-w", str(out), text]
        elif engine == "flite":
            command = ["flite", "-voice", voice["voice"], "-t", text, "-o", str(out)]
        else:
            raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
        subprocess.run(command, check=True, capture_output=True)
        return load_audio(out).numpy() if sample_rate == 16000 else _refuse_rate(sample_rate)


def _refuse_rate(rate: int):
    raise ValueError(f"the data set is built at 16 kHz (Whisper's rate), not {rate}")


def trim(x: np.ndarray, db: float) -> np.ndarray:
    """``x`` without the leading and trailing stretches quieter than ``db`` below its peak."""
    frame = 160  # 10 ms
    n = len(x) // frame
    level = np.sqrt((x[: n * frame].reshape(n, frame) ** 2).mean(1) + 1e-20)
    loud = np.flatnonzero(20 * np.log10(level / level.max()) > db)
    if len(loud) == 0:
        raise ValueError("a synthesised piece is silent")
    return x[loud[0] * frame : (loud[-1] + 1) * frame]


def assemble(pieces: list[np.ndarray], word_index: int, gap_s: float, edge_s: float, rate: int):
    """The pieces joined by ``gap_s`` of silence (``edge_s`` at both ends), and where piece
    ``word_index`` starts and ends (seconds)."""
    gap, edge = np.zeros(int(gap_s * rate), np.float32), np.zeros(int(edge_s * rate), np.float32)
    parts, at, span = [edge], len(edge), (0.0, 0.0)
    for i, piece in enumerate(pieces):
        if i:
            parts.append(gap)
            at += len(gap)
        if i == word_index:
            span = (at / rate, (at + len(piece)) / rate)
        parts.append(piece.astype(np.float32))
        at += len(piece)
    parts.append(edge)
    return np.concatenate(parts), span


def build(out: Path, voices: list[str] | None = None, limit: int | None = None, progress: bool = True) -> Path:
    """Synthesise every item (or the first ``limit``) with each of ``voices`` (names in
    synthesis.json; default: every voice whose engine is installed). Returns the index path."""
    config = settings()
    rate, gap_s, edge_s, db = config["sample_rate"], config["gap_s"], config["edge_s"], config["trim_db"]
    known = {v["name"]: v for v in config["voices"]}
    if voices is None:
        chosen = [v for v in config["voices"] if shutil.which(v["engine"])]
    else:
        unknown = [v for v in voices if v not in known]
        if unknown:
            raise ValueError(f"unknown voices {unknown}; synthesis.json has {', '.join(known)}")
        chosen = [known[v] for v in voices]
    if not chosen:
        raise RuntimeError(f"no speech engine installed: apt-get install {' '.join(ENGINES)}")
    items = read_items()[:limit]
    rows = []
    for voice in chosen:
        folder = out / voice["name"]
        folder.mkdir(parents=True, exist_ok=True)
        cache: dict[str, np.ndarray] = {}  # the neutral carriers recur: synthesise each once per voice
        for n, item in enumerate(tqdm(items, desc=f"synthesis {voice['name']}", disable=not progress)):
            before, after = config["neutral"][n % len(config["neutral"])]
            versions = {
                "context": ([item.before, item.acoustic, item.after], item.text, item.before),
                "neutral": ([before, item.acoustic, after], f"{before} {item.acoustic} {after}", before),
            }
            for condition, (texts, sentence, text_before) in versions.items():
                path = folder / f"{item.id}_{condition}.wav"
                word = texts.index(item.acoustic)
                for t in texts:
                    if t and t not in cache:
                        cache[t] = trim(synthesise(voice, t, rate), db)
                pieces = [cache[t] for t in texts if t]
                audio, (start, end) = assemble(pieces, word - (0 if texts[0] else 1), gap_s, edge_s, rate)
                if not path.exists():
                    sf.write(path, audio, rate, subtype="FLOAT")
                rows.append(
                    dict(
                        id=item.id, pair=item.pair, voice=voice["name"], condition=condition,
                        path=str(path.relative_to(out)), word_start=f"{start:.4f}", word_end=f"{end:.4f}",
                        duration=f"{len(audio) / rate:.4f}", acoustic=item.acoustic, contextual=item.contextual,
                        before=text_before, text=sentence,
                    )
                )  # fmt: skip
    index = out / "index.tsv"
    with open(index, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return index


def read_index(out: Path) -> list[dict]:
    with open(out / "index.tsv") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the clips and index.tsv into")
    parser.add_argument("--voices", help="comma-separated voice names from synthesis.json (default: all installed)")
    parser.add_argument("--limit", type=int, help="only the first N items")
    args = parser.parse_args()
    index = build(args.out, args.voices.split(",") if args.voices else None, args.limit)
    print(f"wrote {index}")


if __name__ == "__main__":
    main()
