"""Data for the hallucination probe on real transcribed speech, as the seed paper framed it:
utterances the model transcribes with no error against those it transcribes worst.

    .venv/bin/python benchmarks/paper/hallucination_speech_data.py \\
        --prompts ROOT_OF_asterisk-core-sounds-en-wav_AND_asterisk-core-sounds-en \\
        --noise .../asterisk/moh .../sounds/sound-icons --out DIR --model tiny.en

Speech: Debian's ``asterisk-core-sounds-en-wav`` (human-read telephone prompts, one speaker,
8 kHz; their transcripts are ``core-sounds-en.txt`` from ``asterisk-core-sounds-en``) and the
clips in tests/data with their ``transcripts.tsv``. Each prompt is heard in several versions to
spread the word error rate: as recorded, with real noise added (music tracks and sound-effect
sequences from the Debian packages, at set signal-to-noise ratios), and through codec2 700C
(``c2enc``/``c2dec`` when found on PATH or under ``--codec2``; telephone band 300-3400 Hz plus
noise otherwise). Every version of a prompt shares its group (the prompt id), so folds and
bootstraps never split a prompt.

Each item is transcribed greedily in one 30 s window, and written down: its tokens and text,
WER and insertion rate against the reference (``hooked_whisper.metrics.word_error_rate``, after
spelling out digits on both sides, since the prompts write "press 1" and the model may write
"press one"), the model's own signals (average log-probability, P(no speech), output length,
compression ratio), and activations: every decoder layer's residual stream (``hook_resid_post``)
at the ``<|endoftext|>`` position (the transcript teacher-forced with its end-of-text) and at
the position before it (the last text token, which predicts end-of-text), and every encoder
layer's residual stream averaged over the frames that hold audio.

``extract_activations`` is not used: its decoder pooling reads the last transcript token (the
position before end-of-text, never end-of-text itself), and it would decode a second time to
get the signals that ``decode_window`` already returns. Output in ``--out``: ``items.jsonl`` (one
line per item) and ``acts/*.safetensors`` (one file per batch, rows in the order of the
``keys`` in its metadata). A rerun skips items already written, keyed by a hash of the audio,
the model and the decoding settings.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).parent.parent.parent))
from hooked_whisper import HookedWhisper, load_audio  # noqa: E402
from hooked_whisper.decoding.search import DecodingOptions, decode_window  # noqa: E402
from hooked_whisper.metrics import normalize_text, read_transcripts, word_error_rate  # noqa: E402

SR = 16000
MAX_SECONDS = 30.0
NOISE_SNRS = (10.0, 5.0, 0.0, -5.0)  # dB; the noisy version of prompt i uses NOISE_SNRS[i % 4]
TRACK_SECONDS = 10.0  # a noise file at least this long is a source of its own; shorter ones form a sequence
DIGITS = "zero one two three four five six seven eight nine".split()
TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


@dataclass
class Prompt:
    id: str  # the group: every degraded version of this recording shares it
    path: Path
    text: str


@dataclass
class Item:
    prompt: Prompt
    condition: str  # clean, noise, codec2 or telephone
    noise_source: str  # "" when no noise was added
    snr_db: float | None
    audio: torch.Tensor  # 16 kHz mono


# ---------------------------------------------------------------- speech and references


def parse_core_sounds(text: str) -> dict[str, str]:
    """``core-sounds-en.txt`` as {sound name: transcript}: lines ``name: words``, comments after
    ``;``; bracketed parts ([ascending tones]) are descriptions, not words, and are dropped."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(";") or ":" not in line:
            continue
        name, words = line.split(":", 1)
        name, words = name.strip(), re.sub(r"\[[^\]]*\]", " ", words).strip()
        if re.fullmatch(r"[\w./-]+", name) and re.search(r"[^\W_]", words):
            out[name] = " ".join(words.split())
    return out


def asterisk_prompts(root: Path) -> list[Prompt]:
    """The prompts of ``asterisk-core-sounds-en-wav`` with a transcript in ``core-sounds-en.txt``
    (plain or gzipped), both searched for anywhere under ``root``."""
    tables = sorted(root.rglob("core-sounds-en.txt*"))
    if not tables:
        raise FileNotFoundError(f"no core-sounds-en.txt(.gz) under {root}: unpack asterisk-core-sounds-en there")
    raw = tables[0].read_bytes()
    transcripts = parse_core_sounds((gzip.decompress(raw) if tables[0].suffix == ".gz" else raw).decode("utf-8"))
    voices = sorted({p.parent for p in root.rglob("sounds/*/*.wav")})
    if not voices:
        raise FileNotFoundError(f"no sounds/<voice>/*.wav under {root}: unpack asterisk-core-sounds-en-wav there")
    voice = voices[0]
    prompts = [Prompt(f"asterisk:{n}", voice / f"{n}.wav", t) for n, t in transcripts.items()]
    return [p for p in prompts if p.path.is_file()]


def folder_prompts(folder: Path) -> list[Prompt]:
    """Clips listed in ``folder/transcripts.tsv``."""
    return [Prompt(f"{folder.name}:{f}", folder / f, t) for f, t in sorted(read_transcripts(folder).items())]


# ---------------------------------------------------------------- degradations


def noise_sources(roots: list[Path]) -> dict[str, list[torch.Tensor]]:
    """Noise from every wav under the ``roots``: a file of at least ``TRACK_SECONDS`` is a source of its
    own (a music track); shorter files are pooled by folder into one source played as a sequence."""
    sources: dict[str, list[torch.Tensor]] = {}
    for path in sorted(p for root in roots for p in root.rglob("*.wav")):
        audio = load_audio(path)
        if audio.shape[0] >= TRACK_SECONDS * SR:
            sources[path.stem] = [audio]
        else:
            sources.setdefault(path.parent.name, []).append(audio)
    if not sources:
        raise FileNotFoundError(f"no .wav noise under {roots}: unpack asterisk-moh-opsound-wav and sound-icons there")
    return sources


def noise_like(n: int, source: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    """``n`` samples of ``source``: a random stretch of a track, or its sounds in a random order
    with short silences between them."""
    if len(source) == 1:
        track = source[0]
        start = int(torch.randint(0, max(1, track.shape[0] - n), (1,), generator=gen))
        piece = track[start : start + n]
        return torch.cat([piece, torch.zeros(n - piece.shape[0])])
    parts, length = [], 0
    while length < n:
        parts += [source[int(torch.randint(len(source), (1,), generator=gen))], torch.zeros(int(0.1 * SR))]
        length += parts[-2].shape[0] + parts[-1].shape[0]
    return torch.cat(parts)[:n]


def add_noise(clip: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``clip`` plus ``noise`` scaled to ``snr_db`` (RMS over the whole clip), the sum scaled down
    to a peak of 0.99 if it would clip (the ratio is kept)."""
    gain = clip.pow(2).mean().sqrt() / noise.pow(2).mean().sqrt().clamp(min=1e-8) / 10 ** (snr_db / 20)
    mixed = clip + gain * noise
    return mixed * min(1.0, 0.99 / float(mixed.abs().max().clamp(min=1e-8)))


def telephone(clip: torch.Tensor) -> torch.Tensor:
    """300-3400 Hz band (a brick-wall FFT mask), then down to 8 kHz and back to 16 kHz."""
    import torchaudio.functional as F

    spectrum = torch.fft.rfft(clip)
    freqs = torch.fft.rfftfreq(clip.shape[0], 1 / SR)
    band = torch.fft.irfft(spectrum * ((freqs >= 300) & (freqs <= 3400)), n=clip.shape[0])
    return F.resample(F.resample(band, SR, 8000), 8000, SR)[: clip.shape[0]]


def find_codec2(folder: Path | None) -> tuple[Path, Path, dict] | None:
    """(c2enc, c2dec, environment) from ``folder`` (an unpacked Debian ``codec2`` with its
    ``libcodec2``) or PATH; None when absent or not runnable."""
    if folder is not None:
        enc, dec = next(folder.rglob("bin/c2enc"), None), next(folder.rglob("bin/c2dec"), None)
        libs = sorted({str(p.parent) for p in folder.rglob("libcodec2.so*")})
        env = {"LD_LIBRARY_PATH": ":".join(libs), "PATH": "/usr/bin:/bin"}
    else:
        enc, dec, env = shutil.which("c2enc"), shutil.which("c2dec"), None
    if not enc or not dec:
        return None
    probe = subprocess.run([enc], env=env, capture_output=True, text=True)
    return (Path(enc), Path(dec), env) if "usage" in (probe.stdout + probe.stderr).lower() else None


def codec2(clip: torch.Tensor, tools: tuple[Path, Path, dict], mode: str = "700C") -> torch.Tensor:
    """``clip`` through codec2 ``mode`` (8 kHz 16-bit raw in and out) and back to 16 kHz."""
    import torchaudio.functional as F

    enc, dec, env = tools
    pcm = (F.resample(clip, SR, 8000).clamp(-1, 1) * 32767).to(torch.int16).numpy().tobytes()
    with tempfile.TemporaryDirectory() as tmp:
        raw, bits, out = Path(tmp, "in.raw"), Path(tmp, "c.bit"), Path(tmp, "out.raw")
        raw.write_bytes(pcm)
        subprocess.run([enc, mode, raw, bits], env=env, check=True, capture_output=True)
        subprocess.run([dec, mode, bits, out], env=env, check=True, capture_output=True)
        decoded = torch.frombuffer(bytearray(out.read_bytes()), dtype=torch.int16).float() / 32767
    return F.resample(decoded, 8000, SR)[: clip.shape[0]]


def degraded_items(
    prompts: list[Prompt], sources: dict[str, list[torch.Tensor]], codec: tuple | None, seed: int = 0
) -> list[Item]:
    """Three versions of each prompt: as recorded; with noise (source and SNR cycle over the
    prompts, so every source meets every SNR); codec2 700C (or, without codec2, telephone band
    with noise at 5 dB)."""
    gen = torch.Generator().manual_seed(seed)
    names = sorted(sources)
    items = []
    for i, prompt in enumerate(prompts):
        clean = load_audio(prompt.path)[: int(MAX_SECONDS * SR)]
        source, snr = names[i % len(names)], NOISE_SNRS[(i // len(names)) % len(NOISE_SNRS)]
        noisy = add_noise(clean, noise_like(clean.shape[0], sources[source], gen), snr)
        items += [Item(prompt, "clean", "", None, clean), Item(prompt, "noise", source, snr, noisy)]
        if codec is not None:
            items.append(Item(prompt, "codec2", "", None, codec2(clean, codec)))
        else:
            other = names[(i + 1) % len(names)]
            phone = add_noise(telephone(clean), noise_like(clean.shape[0], sources[other], gen), 5.0)
            items.append(Item(prompt, "telephone", other, 5.0, phone))
    return items


# ---------------------------------------------------------------- scoring


def spoken_numbers(text: str) -> str:
    """Whole numbers 0-99 written as words, so "press 1" and "press one" read the same."""

    def words(m: re.Match) -> str:
        n = int(m.group())
        if n < 10:
            return DIGITS[n]
        if n < 20:
            return TEENS[n - 10]
        return TENS[n // 10 - 2] + ("" if n % 10 == 0 else " " + DIGITS[n % 10])

    return re.sub(r"\b\d{1,2}\b", words, text)


def insertions(reference: str, hypothesis: str) -> int:
    """Inserted words in one minimum edit alignment (ties broken towards matches and
    substitutions, then deletions), after ``normalize_text``."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    cost = [[0] * (len(hyp) + 1) for _ in range(len(ref) + 1)]
    for i in range(len(ref) + 1):
        for j in range(len(hyp) + 1):
            if i == 0 or j == 0:
                cost[i][j] = i + j
            else:
                cost[i][j] = min(
                    cost[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]), cost[i - 1][j] + 1, cost[i][j - 1] + 1
                )
    i, j, inserted = len(ref), len(hyp), 0
    while i > 0 or j > 0:
        if i > 0 and j > 0 and cost[i][j] == cost[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            i, j = i - 1, j - 1
        elif i > 0 and cost[i][j] == cost[i - 1][j] + 1:
            i -= 1
        else:
            j, inserted = j - 1, inserted + 1
    return inserted


def item_key(item: Item, settings: dict) -> str:
    digest = hashlib.sha256(item.audio.numpy().tobytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def hooks_of(model: HookedWhisper) -> tuple[list[str], list[str]]:
    enc = [model.hook_name("encoder", l, "hook_resid_post") for l in range(model.layer_count("encoder"))]
    dec = [model.hook_name("decoder", l, "hook_resid_post") for l in range(model.layer_count("decoder"))]
    return enc, dec


@torch.no_grad()
def transcribe_batch(model: HookedWhisper, items: list[Item], options: DecodingOptions) -> tuple[list[dict], dict]:
    """Greedy transcripts of ``items`` and their per-item fields, and the activations
    (``{name: [batch, d_model]}``: ``enc.{l}``, ``eot.{l}``, ``last.{l}``)."""
    enc_hooks, dec_hooks = hooks_of(model)
    caught: dict[str, torch.Tensor] = {}

    def catch(x: torch.Tensor, hook) -> None:
        caught[hook.name] = x

    waves = [it.audio for it in items]
    with model.hooks(fwd_hooks=[(h, catch) for h in enc_hooks]):
        encoder_out = model.encode(model.to_mel(waves, sample_rate=SR))
    unit = model.hook_layout(enc_hooks[0]).unit
    real = [model.real_position_count(unit, w.shape[0]) for w in waves]
    acts = {
        f"enc.{l}": torch.stack([caught[h][i, : real[i]].mean(0) for i in range(len(items))])
        for l, h in enumerate(enc_hooks)
    }
    results = decode_window(model, encoder_out, options)
    eot = model.special.eot
    rows = [r.prompt + r.tokens + [eot] for r in results]
    width = max(map(len, rows))
    tokens = torch.tensor([row + [eot] * (width - len(row)) for row in rows])  # padding after: causal, unread
    caught.clear()
    with model.hooks(fwd_hooks=[(h, catch) for h in dec_hooks]):
        model.decode(tokens, encoder_out)
    at_eot = torch.tensor([len(row) - 1 for row in rows])
    batch = torch.arange(len(items))
    for l, h in enumerate(dec_hooks):
        acts[f"eot.{l}"] = caught[h][batch, at_eot]
        acts[f"last.{l}"] = caught[h][batch, at_eot - 1]
    fields = []
    for it, r in zip(items, results):
        ref, hyp = spoken_numbers(it.prompt.text), spoken_numbers(r.text)
        n_ref = len(normalize_text(ref))
        fields.append({
            "group": it.prompt.id, "condition": it.condition, "noise_source": it.noise_source, "snr_db": it.snr_db,
            "seconds": round(it.audio.shape[0] / SR, 3), "reference": it.prompt.text, "text": r.text,
            "tokens": r.tokens, "wer": word_error_rate(ref, hyp),
            "insertion_rate": insertions(ref, hyp) / max(n_ref, 1),
            "reference_words": n_ref, "avg_logprob": r.avg_logprob, "no_speech_prob": r.no_speech_prob,
            "n_tokens": len(r.tokens), "compression_ratio": r.compression_ratio, "finished": r.finished,
        })  # fmt: skip
    return fields, {k: v.float().contiguous() for k, v in acts.items()}


def build(
    model: HookedWhisper,
    items: list[Item],
    out: Path,
    batch_size: int = 8,
    max_new_tokens: int = 96,
    progress: bool = True,
) -> int:
    """Transcribe the ``items`` not yet in ``out`` and append them; returns how many were added."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "acts").mkdir(exist_ok=True)
    name = str(getattr(model, "name_or_path", "random"))
    options = DecodingOptions(language="en" if model.cfg.is_multilingual else None, max_new_tokens=max_new_tokens)
    settings = {"model": name, "max_new_tokens": max_new_tokens, "greedy": True, "window": "single"}
    log = out / "items.jsonl"
    done = {json.loads(line)["key"] for line in log.read_text().splitlines()} if log.is_file() else set()
    todo = [(item_key(it, settings), it) for it in items]
    todo = [(k, it) for k, it in todo if k not in done]
    for start in tqdm(range(0, len(todo), batch_size), desc=f"transcribing ({name})", disable=not progress):
        chunk = todo[start : start + batch_size]
        fields, acts = transcribe_batch(model, [it for _, it in chunk], options)
        keys = [k for k, _ in chunk]
        save_file(acts, out / "acts" / f"{keys[0]}.safetensors", metadata={"keys": json.dumps(keys)})
        with open(log, "a") as f:  # after the activations: a line present means its row is on disk
            for k, row in zip(keys, fields):
                f.write(json.dumps({"key": k, "model": name, **row}) + "\n")
    return len(todo)


def load(out: Path, model: str | None = None) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The items of ``out`` (of one ``model`` when given) and their activations stacked in
    item order."""
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    rows = [r for r in rows if model is None or r["model"] == model]
    index = {r["key"]: i for i, r in enumerate(rows)}
    parts: dict[str, list] = {}
    for path in sorted((out / "acts").glob("*.safetensors")):
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            keys = json.loads(f.metadata()["keys"])
        tensors = load_file(path)
        for j, k in enumerate(keys):
            if k in index:
                for name, t in tensors.items():
                    parts.setdefault(name, [None] * len(rows))[index[k]] = t[j]
    missing = [r["key"] for r in rows if any(parts[n][index[r["key"]]] is None for n in parts)]
    if missing:
        raise ValueError(
            f"{len(missing)} item(s) have no activations in {out}/acts (first {missing[0]}): rerun the builder"
        )
    return rows, {name: torch.stack(v) for name, v in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=Path, help="unpacked asterisk-core-sounds-en(-wav)")
    parser.add_argument("--clips", type=Path, default=Path(__file__).parent.parent.parent / "tests" / "data")
    parser.add_argument("--noise", type=Path, nargs="+", required=True, help="folders of noise (music, sound icons)")
    parser.add_argument("--codec2", type=Path, help="unpacked codec2 and libcodec2 (default: c2enc on PATH)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--limit", type=int, help="use only the first N prompts")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = folder_prompts(args.clips) + (asterisk_prompts(args.prompts) if args.prompts else [])
    prompts = prompts[: args.limit]
    codec = find_codec2(args.codec2)
    print(f"{len(prompts)} prompts; codec2 {'found' if codec else 'not found: telephone band plus noise instead'}")
    items = degraded_items(prompts, noise_sources(args.noise), codec)
    added = build(HookedWhisper.from_pretrained(args.model), items, args.out, args.batch_size)
    print(f"{added} item(s) added to {args.out}")


if __name__ == "__main__":
    main()
