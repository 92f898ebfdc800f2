"""Greedy transcription speed: HookedWhisper's KV-cached ``generate`` (without hooks, and with a
cheap hook on every decoder layer) against Hugging Face ``generate`` (sdpa), openai-whisper's
``decode`` and the CTranslate2 engine that faster-whisper wraps, side by side in one process on
the same log-mel features of a ~10 s and a ~30 s real clip. Median of several runs after a
warm-up; ratio = HookedWhisper time / other time (below 1 is faster); tokens/s counts generated
tokens. Every engine decodes greedily without timestamps and writes the same tokens.

    python benchmarks/decoding.py [--models tiny.en base] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from benchmarks.common import DATA, machine, median_time, write_results  # noqa: E402
from hooked_whisper import HookedWhisper, load_audio  # noqa: E402
from weights_conversion import bundled_model, save_hf_folder, save_openai_checkpoint  # noqa: E402


def clips() -> dict[str, torch.Tensor]:
    """~10 s and ~30 s of real speech: test clips joined with short pauses."""
    pause = torch.zeros(8000)
    ten = torch.cat([load_audio(DATA / "librivox_0870.wav"), pause, load_audio(DATA / "cards_005.wav")])
    parts = [load_audio(p) for p in sorted(DATA.glob("*.wav"))]
    thirty = torch.cat([x for p in parts for x in (p, pause)])[: 29 * 16000]
    return {"10s": ten, "30s": thirty}


def ctranslate2_folder(name: str, tmp: Path) -> Path:
    """The bundled CTranslate2 folder; a model shipped in parts is joined into a temporary one."""
    found = bundled_model(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not a bundled CTranslate2 model")
    folder, parts = found
    if len(parts) == 1:
        return folder
    joined = tmp / "ct2"
    joined.mkdir()
    for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (joined / f).write_bytes((folder / f).read_bytes())
    with open(joined / "model.bin", "wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    return joined


def engines(model: HookedWhisper, name: str, tmp: Path) -> dict:
    """name -> function(mel) returning the generated tokens, for each engine installed."""
    from transformers import WhisperForConditionalGeneration

    n_prompt = len(model.prompt_tokens("en" if model.cfg.is_multilingual else None))
    language = {"language": "en"} if model.cfg.is_multilingual else {}
    hf_language = {"language": "en", "task": "transcribe"} if model.cfg.is_multilingual else {}
    hf = WhisperForConditionalGeneration.from_pretrained(save_hf_folder(model, tmp / "hf"), attn_implementation="sdpa")
    hf.eval()
    cheap = [(f"decoder_blocks.{l}.hook_resid_post", lambda x, hook: None) for l in range(model.cfg.n_decoder_layers)]
    out = {
        "hooked": lambda mel: model.generate(mel, **language)[0, n_prompt:-1].tolist(),
        "hooked+hooks": lambda mel: model.generate(mel, fwd_hooks=cheap, **language)[0, n_prompt:-1].tolist(),
        "hf_generate": lambda mel: [t for t in hf.generate(mel, **hf_language)[0].tolist() if t < model.special.eot],
    }
    try:
        import whisper

        reference = whisper.load_model(str(save_openai_checkpoint(model, tmp / "model.pt")), device="cpu")
        options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False)
        out["openai_whisper"] = lambda mel: whisper.decode(reference, mel[0], options).tokens
    except ImportError:
        print("openai-whisper not installed: skipped", file=sys.stderr)
    try:
        import ctranslate2

        ct2 = ctranslate2.models.Whisper(
            str(ctranslate2_folder(name, tmp)),
            device="cpu",
            compute_type="float32",
            intra_threads=torch.get_num_threads(),
        )
        prompt = model.prompt_tokens("en" if model.cfg.is_multilingual else None)

        def run_ct2(mel):
            features = ctranslate2.StorageView.from_array(mel.numpy())
            return ct2.generate(features, [prompt], beam_size=1, suppress_blank=True)[0].sequences_ids[0]

        out["ctranslate2"] = run_ct2
    except (ImportError, FileNotFoundError, ValueError) as err:
        print(f"CTranslate2 skipped: {err}", file=sys.stderr)
    return out


def bench(name: str, repeats: int) -> list[dict]:
    model = HookedWhisper.from_pretrained(name)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        runs = engines(model, name, Path(tmp))
        for clip_name, audio in clips().items():
            mel = model.to_mel(audio).mel
            tokens = runs["hooked"](mel)
            row = {"model": name, "clip": clip_name, "seconds": len(audio) / 16000, "tokens": len(tokens)}
            for engine, fn in runs.items():
                same = fn(mel) == tokens
                t = median_time(partial(fn, mel), repeats)
                row[f"{engine}_s"], row[f"{engine}_same_tokens"] = t, same
                row[f"{engine}_tok_per_s"] = len(tokens) / t
            for engine in runs:
                if engine != "hooked":
                    row[f"ratio_vs_{engine}"] = row["hooked_s"] / row[f"{engine}_s"]
            rows.append(row)
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return rows


COLUMNS = [
    "model", "clip", "tokens", "hooked_s", "hooked_tok_per_s", "hooked+hooks_s", "ratio_vs_hf_generate",
    "ratio_vs_openai_whisper", "ratio_vs_ctranslate2", "hf_generate_s", "openai_whisper_s", "ctranslate2_s",
]  # fmt: skip
FORMATS = {c: ".2f" for c in COLUMNS if c.endswith("_s") or c.startswith("ratio")} | {"hooked_tok_per_s": ".0f"}


def header(repeats: int) -> str:
    return (
        f"Greedy transcription from log-mel, fp32 CPU ({machine()}); median of {repeats} runs; "
        "ratio = HookedWhisper (no hooks) time / other time; all engines wrote the same tokens "
        "unless the JSON says otherwise."
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = [r for name in args.models for r in bench(name, args.repeats)]
    print(write_results("decoding", header(args.repeats), COLUMNS, rows, FORMATS))


if __name__ == "__main__":
    main()
