"""Long-form transcription at dataset speed, side by side in one process:

1. ``fallback``: the loop-aware temperature fallback (the default) against openai's exact
   algorithm (``fallback="openai"``) and openai-whisper itself, on clips whose last window loops:
   the 30.3 s telephone prompt ``demo-congrats.wav`` (Debian ``asterisk-core-sounds-en-wav``,
   8 kHz, CC-BY-SA-3.0, fetched with ``apt-get download``) and 29 s of the test clips followed by
   a tiled 0.4 s piece. Also ``temperature=0`` alone, where openai keeps the loop.
2. ``batch``: 16 real clips transcribed one by one and with ``batch_size`` 4, 8 and 16, against
   Hugging Face ``generate`` over the same clips in batches (``return_timestamps=True``; its
   long-form path for clips over 30 s). The clips are VoxLingua107's English ones when ``--data``
   names its folder, else 5-30 s stretches of the test clips.
3. ``half``: the encoder forward pass and a whole transcription in bfloat16 and float16 against
   Hugging Face (sdpa) in the same dtype, and against our float32.

    python benchmarks/long_form.py [--parts fallback batch half] [--models tiny.en base] [--data DIR]
"""

from __future__ import annotations

import argparse
import copy
import csv
import gzip
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from benchmarks.common import DATA, debian_files, machine, median_time, write_results  # noqa: E402
from hooked_whisper import HookedWhisper, load_audio  # noqa: E402
from hooked_whisper.metrics import word_error_rate  # noqa: E402
from weights_conversion import save_hf_folder, save_openai_checkpoint  # noqa: E402

CACHE = Path(__file__).parent / "results" / "cache"


def looping_clips() -> dict[str, tuple[torch.Tensor, str]]:
    """name -> (16 kHz waveform, reference transcript or '')."""
    sounds = debian_files(CACHE / "asterisk-core-sounds", ["asterisk-core-sounds-en-wav"])
    congrats = next(sounds.rglob("en_US_f_Allison/demo-congrats.wav"))
    text_package = debian_files(CACHE / "asterisk-core-sounds-text", ["asterisk-core-sounds-en"])
    reference = ""
    for listing in text_package.rglob("core-sounds-en.txt.gz"):
        for line in gzip.decompress(listing.read_bytes()).decode(errors="replace").splitlines():
            if line.startswith("demo-congrats:"):
                reference = line.split(":", 1)[1].strip()
    pause = torch.zeros(24000)  # the test clips with 1.5 s pauses, as the suite's looping-tail clip
    joined = torch.cat([x for p in sorted(DATA.glob("*.wav")) for x in (load_audio(p), pause)])
    piece = load_audio(DATA / "goforward.wav")[int(0.3 * 16000) : int(0.7 * 16000)]
    return {
        "telephone-30.3s": (load_audio(congrats), reference),
        "speech+tiled-piece": (torch.cat([joined[: 29 * 16000], piece.repeat(4)]), ""),
    }


def fallback_part(names: list[str], repeats: int) -> list[dict]:
    return [row for name in names for row in fallback_rows(name, repeats)]


def fallback_rows(name: str, repeats: int) -> list[dict]:
    import whisper

    rows = []
    model = HookedWhisper.from_pretrained(name)
    language = "en" if model.cfg.is_multilingual else None
    with tempfile.TemporaryDirectory() as tmp:
        reference = whisper.load_model(str(save_openai_checkpoint(model, Path(tmp) / "m.pt")), device="cpu")
    for clip, (audio, truth) in looping_clips().items():
        runs = {
            "loop_aware": lambda a=audio: model.transcribe(a, sample_rate=16000, language=language, progress=False),
            "exact": lambda a=audio: model.transcribe(
                a, sample_rate=16000, language=language, fallback="openai", progress=False
            ),
            "openai_whisper": lambda a=audio: whisper.transcribe(
                reference, a.numpy(), language="en", fp16=False, verbose=None
            ),
            "loop_aware_t0": lambda a=audio: model.transcribe(
                a, sample_rate=16000, language=language, temperature=0.0, progress=False
            ),
            "openai_whisper_t0": lambda a=audio: whisper.transcribe(
                reference, a.numpy(), language="en", fp16=False, verbose=None, temperature=0.0
            ),
        }
        row: dict = {"model": name, "clip": clip, "seconds": len(audio) / 16000}
        for run, fn in runs.items():
            result = fn()
            text = result["text"] if isinstance(result, dict) else result.text
            row[f"{run}_s"] = median_time(fn, repeats)
            row[f"{run}_words"] = len(text.split())
            if truth:
                row[f"{run}_wer"] = word_error_rate(truth, text)
            row[f"{run}_text"] = text
        row["aware_over_openai"] = row["loop_aware_s"] / row["openai_whisper_s"]
        row["aware_over_exact"] = row["loop_aware_s"] / row["exact_s"]
        row["same_text_as_exact"] = row["loop_aware_text"] == row["exact_text"]
        rows.append(row)
        print({k: v for k, v in row.items() if not k.endswith("_text")}, flush=True)
    return rows


def with_reference(name: str):
    """The bundled model, its language options, and Hugging Face's model (sdpa) and processor
    loaded from its export."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = HookedWhisper.from_pretrained(name)
    language = {"language": "en"} if model.cfg.is_multilingual else {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_hf_folder(model, Path(tmp) / "hf")
        hf = WhisperForConditionalGeneration.from_pretrained(folder, attn_implementation="sdpa").eval()
        processor = WhisperProcessor.from_pretrained(folder)
    return model, language, hf, processor


def batch_clips(data: Path | None, n: int = 16) -> list[torch.Tensor]:
    if data is not None:
        with open(data / "clips.tsv") as f:
            listed = [r for r in csv.DictReader(f, delimiter="\t") if r["language"] == "en"]
        picked = [r for r in listed if float(r["seconds"]) >= 5][:n]
        return [load_audio(data / r["path"]) for r in picked]
    joined = torch.cat([load_audio(p) for p in sorted(DATA.glob("*.wav"))] * 3)
    lengths = [5 + 25 * i / (n - 1) for i in range(n)]  # 5 s to 30 s
    starts = [int(i * 7.3 * 16000) % (len(joined) - 31 * 16000) for i in range(n)]
    return [joined[s : s + int(length * 16000)] for s, length in zip(starts, lengths)]


def batch_part(names: list[str], repeats: int, data: Path | None) -> list[dict]:
    clips = batch_clips(data)
    return [row for name in names for row in batch_rows(name, repeats, clips)]


def batch_rows(name: str, repeats: int, clips: list[torch.Tensor]) -> list[dict]:
    audio_s = sum(len(c) for c in clips) / 16000
    rows = []
    model, language, hf, processor = with_reference(name)

    def ours(batch_size: int):
        return model.transcribe(clips, sample_rate=16000, batch_size=batch_size, progress=False, **language)

    def hf_batched(batch_size: int) -> list[str]:
        texts = []
        for i in range(0, len(clips), batch_size):
            part = [c.numpy() for c in clips[i : i + batch_size]]
            inputs = processor(
                part,
                sampling_rate=16000,
                return_tensors="pt",
                truncation=False,
                padding="longest",
                return_attention_mask=True,
            )
            if inputs.input_features.shape[-1] < 3000:  # all under 30 s: the short-form path
                inputs = processor(part, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
            with torch.inference_mode():
                out = hf.generate(**inputs, return_timestamps=True, **language)
            texts += processor.batch_decode(out, skip_special_tokens=True)
        return texts

    one = [t.text for t in ours(1)]
    base_s = median_time(lambda: ours(1), repeats)
    for batch_size in (1, 4, 8, 16):
        row: dict = {"model": name, "clips": len(clips), "audio_s": audio_s, "batch_size": batch_size}
        texts = [t.text for t in ours(batch_size)]
        row["hooked_s"] = base_s if batch_size == 1 else median_time(lambda b=batch_size: ours(b), repeats)
        row["hooked_same_text_as_one_by_one"] = texts == one
        row["speedup_vs_one_by_one"] = base_s / row["hooked_s"]
        hf_texts = hf_batched(batch_size)
        row["hf_generate_s"] = median_time(lambda b=batch_size: hf_batched(b), repeats)
        row["ratio_vs_hf_generate"] = row["hooked_s"] / row["hf_generate_s"]
        row["hf_mean_wer_vs_ours"] = sum(word_error_rate(a, b) for a, b in zip(one, hf_texts)) / len(one)
        rows.append(row)
        print(row, flush=True)
    return rows


def half_part(names: list[str], repeats: int) -> list[dict]:
    return [row for name in names for row in half_rows(name, repeats)]


def half_rows(name: str, repeats: int) -> list[dict]:
    clip = DATA / "librivox_0870.wav"
    rows = []
    full, language, hf_full, _ = with_reference(name)
    reference_text = full.transcribe(clip, progress=False, **language).text
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        row = half_row(name, dtype, copy.deepcopy(hf_full).to(dtype), clip, repeats, language)
        text = row.pop("text")
        row["same_text_as_float32"] = text == reference_text
        row["wer_vs_float32"] = word_error_rate(reference_text, text)
        rows.append(row)
        print(row, flush=True)
    return rows


def half_row(name: str, dtype: torch.dtype, hf, clip: Path, repeats: int, language: dict) -> dict:
    model = HookedWhisper.from_pretrained(name, dtype=dtype)
    mel = model.to_mel(clip).mel
    with torch.inference_mode():
        row: dict = {"model": name, "dtype": str(dtype).removeprefix("torch.")}
        row["hooked_encoder_s"] = median_time(lambda: model.encode(mel), repeats)
        row["hf_encoder_s"] = median_time(lambda: hf.model.encoder(mel), repeats)
        row["hooked_transcribe_s"] = median_time(lambda: model.transcribe(clip, progress=False, **language), 1)
        row["hf_generate_s"] = median_time(lambda: hf.generate(mel, return_timestamps=True, **language), 1)
    row["encoder_ratio"] = row["hooked_encoder_s"] / row["hf_encoder_s"]
    row["transcribe_ratio"] = row["hooked_transcribe_s"] / row["hf_generate_s"]
    row["text"] = model.transcribe(clip, progress=False, **language).text
    return row


FALLBACK_COLUMNS = [
    "model", "clip", "seconds", "loop_aware_s", "exact_s", "openai_whisper_s", "aware_over_openai",
    "aware_over_exact", "same_text_as_exact", "loop_aware_wer", "exact_wer", "openai_whisper_wer",
    "loop_aware_t0_s", "openai_whisper_t0_s", "loop_aware_t0_wer", "openai_whisper_t0_wer",
]  # fmt: skip
BATCH_COLUMNS = [
    "model", "clips", "audio_s", "batch_size", "hooked_s", "speedup_vs_one_by_one", "hooked_same_text_as_one_by_one",
    "hf_generate_s", "ratio_vs_hf_generate", "hf_mean_wer_vs_ours",
]  # fmt: skip
HALF_COLUMNS = [
    "model", "dtype", "hooked_encoder_s", "hf_encoder_s", "encoder_ratio", "hooked_transcribe_s", "hf_generate_s",
    "transcribe_ratio", "same_text_as_float32", "wer_vs_float32",
]  # fmt: skip


def formats(columns: list[str]) -> dict[str, str]:
    numbers = ("_s", "ratio", "speedup_vs_one_by_one", "seconds")
    return {c: ".2f" for c in columns if c.endswith(numbers) or c.startswith("ratio") or "wer" in c or "over" in c}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", nargs="+", default=["fallback", "batch", "half"])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=None, help="a folder with clips.tsv (VoxLingua107 subset)")
    args = parser.parse_args()
    where = f"CPU ({machine()})"
    if "fallback" in args.parts:
        rows = fallback_part(args.models, args.repeats)
        head = (
            f"Long-form transcription of clips whose last window loops, {where}; median of {args.repeats} runs. "
            "loop_aware: the default; exact: fallback='openai'; *_t0: temperature 0 only. WER against the "
            "prompt's published text where there is one."
        )
        print(write_results("long_form_fallback", head, FALLBACK_COLUMNS, rows, formats(FALLBACK_COLUMNS)))
    if "batch" in args.parts:
        rows = batch_part(args.models, args.repeats, args.data)
        head = (
            f"Batched long-form transcription of 16 real clips, {where}; median of {args.repeats} runs; "
            "speedup = one by one / batched; ratio = ours / Hugging Face generate at the same batch size."
        )
        print(write_results("long_form_batch", head, BATCH_COLUMNS, rows, formats(BATCH_COLUMNS)))
    if "half" in args.parts:
        rows = half_part(args.models, args.repeats)
        head = f"Half precision on the CPU, {where}: ours against Hugging Face (sdpa) in the same dtype."
        print(write_results("long_form_half", head, HALF_COLUMNS, rows, formats(HALF_COLUMNS)))


if __name__ == "__main__":
    main()
