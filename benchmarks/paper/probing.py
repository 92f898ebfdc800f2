"""The seed paper's reading experiments on real weights (tiny.en and base), in one command:

    .venv/bin/python benchmarks/paper/probing.py            # needs espeak-ng (apt-get install espeak-ng)

1. Builds a labelled speech set with espeak-ng: the same sentences in four English accents
   (American, British RP, Scottish, Caribbean), each by two male and two female voice variants; the
   same clips with white noise mixed in at 0, 5 or 10 dB SNR; and non-speech sounds (noise,
   tones, chords, clicks, near-silence).
2. Probes speaker gender, accent and clean-vs-noisy on the mean over real audio frames of every
   encoder layer, and speech vs non-speech on every decoder layer at the last prompt position
   (before any text is written), with 5-fold cross-validated logistic regression, a majority
   baseline and a shuffled-label control.
3. Runs the encoder lens on a real LibriVox clip.

Writes ``results/probing.md``, ``results/probing.json`` and plots beside this file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from hooked_whisper import HookedWhisper, load_audio
from hooked_whisper.lens import encoder_lens
from hooked_whisper.metrics import read_transcripts
from hooked_whisper.plots import plot_encoder_lens, plot_probes
from hooked_whisper.probing import extract_activations, train_probes

HERE = Path(__file__).parent
DATA = HERE.parent.parent / "tests" / "data"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "The weather was cold and windy when we reached the harbour.",
    "She sells sea shells by the sea shore every summer.",
    "My grandfather planted an apple tree behind the old barn.",
    "The train to Edinburgh leaves at half past seven tomorrow morning.",
    "We need six spoons of fresh snow peas and five thick slabs of cheese.",
    "A large red ball rolled slowly down the hill towards the river.",
    "Nobody expected the meeting to last more than an hour.",
    "The children laughed as the puppy chased its own tail.",
    "Turn left at the second traffic light and park near the bakery.",
    "Reading books late at night makes it hard to wake up early.",
]
# "en-gb" itself ignores voice variants (every "+m1"/"+f3" renders the same audio), so the British
# accent is Received Pronunciation, which honours them; synthesize() checks this for every voice.
ACCENTS = {"American": "en-us", "British": "en-gb-x-rp", "Scottish": "en-gb-scotland", "Caribbean": "en-029"}
VOICES = {"m1": "male", "m3": "male", "f1": "female", "f3": "female"}
PAPER = {  # large-v3, as secondary sources report the paper
    "gender": "94.6% (encoder layer 25)",
    "accent": "97.0% (layer 22)",
    "noise": "90.0% (layer 27)",
    "speech": "100% (decoder layers 10-28)",
}


def synthesize(folder: Path) -> list[dict]:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed: apt-get install espeak-ng")
    clips = []
    for s, sentence in enumerate(SENTENCES):
        for accent, voice in ACCENTS.items():
            for variant, gender in VOICES.items():
                path = folder / f"s{s:02d}_{voice}_{variant}.wav"
                subprocess.run(["espeak-ng", "-v", f"{voice}+{variant}", "-w", str(path), sentence], check=True)
                clips.append({"path": path, "accent": accent, "gender": gender, "sentence": s})
    distinct = {(c["accent"], c["sentence"]): set() for c in clips}
    for c in clips:
        distinct[(c["accent"], c["sentence"])].add(hashlib.sha1(c["path"].read_bytes()).hexdigest())
    if any(len(v) < len(VOICES) for v in distinct.values()):
        raise SystemExit("espeak-ng rendered some voice variants identically: the gender labels would be noise")
    return clips


def with_noise(clip: torch.Tensor, snr_db: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(clip.shape, generator=generator)
    scale = (clip.pow(2).mean() / noise.pow(2).mean() / 10 ** (snr_db / 10)).sqrt()
    return clip + scale * noise


def non_speech(n: int, generator: torch.Generator) -> list[torch.Tensor]:
    sounds = []
    t = torch.arange(16000 * 3) / 16000
    for i in range(n):
        kind = i % 5
        if kind == 0:  # white noise
            x = 0.1 * torch.randn(t.shape, generator=generator)
        elif kind == 1:  # low-passed (brown-ish) noise
            x = torch.randn(t.shape, generator=generator).cumsum(0)
            x = (x - x.mean()) / x.abs().max() * 0.3
        elif kind == 2:  # a tone
            x = 0.3 * torch.sin(2 * torch.pi * (200 + 40 * i) * t)
        elif kind == 3:  # a chord with a slow tremolo: music-like
            base = 110 * 2 ** (i % 12 / 12)
            x = sum(torch.sin(2 * torch.pi * base * r * t) for r in (1, 1.25, 1.5)) * 0.1 * (1 + 0.5 * torch.sin(3 * t))
        else:  # clicks over near-silence
            x = 0.001 * torch.randn(t.shape, generator=generator)
            x[:: 1600 + 37 * i] = 0.8
        sounds.append(x.float())
    return sounds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    summary: dict = {"paper_large_v3": PAPER, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        speech = synthesize(Path(tmp))
        waves = [load_audio(c["path"]) for c in speech]
        real = [load_audio(p) for p in sorted(DATA.glob("*.wav"))]
        snrs = [float([0, 5, 10][i % 3]) for i in range(len(waves) + len(real))]
        noisy = [with_noise(w, snr, g) for w, snr in zip(waves + real, snrs)]
        others = non_speech(len(waves) // 2, g)
        for name in args.models:
            model = HookedWhisper.from_pretrained(name)
            enc_hooks = [f"encoder_blocks.{l}.hook_resid_post" for l in range(model.cfg.n_encoder_layers)]
            dec_hooks = [f"decoder_blocks.{l}.hook_resid_post" for l in range(model.cfg.n_decoder_layers)]
            clean_acts = extract_activations(model, waves + real, enc_hooks)
            noisy_acts = extract_activations(model, noisy, enc_hooks)
            n_synth = len(waves)
            reports = {
                "gender": train_probes({h: clean_acts[h][:n_synth] for h in enc_hooks}, [c["gender"] for c in speech]),
                "accent": train_probes({h: clean_acts[h][:n_synth] for h in enc_hooks}, [c["accent"] for c in speech]),
                "noise": train_probes(
                    {h: torch.cat([clean_acts[h], noisy_acts[h]]) for h in enc_hooks},
                    ["clean"] * len(noisy) + ["noisy"] * len(noisy),
                ),
            }
            speech_subset = waves[::2]
            dec_acts = extract_activations(model, speech_subset + others, dec_hooks, decoder_pooling="prompt_end")
            reports["speech"] = train_probes(dec_acts, ["speech"] * len(speech_subset) + ["non-speech"] * len(others))
            plot_probes(
                {k: v for k, v in reports.items() if k != "speech"},
                out / f"probing_encoder_{name}.png",
                title=f"{name}: encoder probes",
            )
            plot_probes(
                {"speech vs non-speech": reports["speech"]},
                out / f"probing_decoder_{name}.png",
                title=f"{name}: decoder probe",
            )
            lens_rows = encoder_lens(
                model, DATA / "librivox_0870.wav", reference=read_transcripts(DATA)["librivox_0870.wav"]
            )
            plot_encoder_lens(lens_rows, out / f"encoder_lens_{name}.png", title=f"{name}: encoder lens, librivox_0870")
            summary["models"][name] = {
                "probes": {
                    task: {"n": r.n, "classes": [str(c) for c in r.classes], "layers": [vars(x) for x in r.results]}
                    for task, r in reports.items()
                },
                "encoder_lens": [
                    {
                        "layer": r.layer,
                        "text": r.text,
                        "wer_vs_final": r.wer_vs_final,
                        "wer_vs_reference": r.wer_vs_reference,
                        "looping": r.loop.looping,
                    }
                    for r in lens_rows
                ],
            }
    (out / "probing.json").write_text(json.dumps(summary, indent=2))
    (out / "probing.md").write_text(markdown(summary))
    print(markdown(summary))


def markdown(summary: dict) -> str:
    lines = [
        "| task | model | best layer | accuracy | majority | shuffled labels | paper (large-v3) |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in ("gender", "accent", "noise", "speech"):
        for name, res in summary["models"].items():
            layers = res["probes"][task]["layers"]
            best = max(layers, key=lambda r: r["accuracy"])
            side = "decoder" if task == "speech" else "encoder"
            lines.append(
                f"| {task} | {name} | {side} {best['layer']} | {best['accuracy']:.3f} ± {best['accuracy_std']:.3f} "
                f"| {best['majority']:.3f} | {best['shuffled']:.3f} | {summary['paper_large_v3'][task]} |"
            )
    lines += ["", "Per layer (accuracy):", ""]
    for name, res in summary["models"].items():
        for task, p in res["probes"].items():
            accs = ", ".join(f"L{r['layer']} {r['accuracy']:.2f}" for r in p["layers"])
            lines.append(f"- {name} {task} (n={p['n']}, classes {'/'.join(p['classes'])}): {accs}")
    lines += ["", "Encoder lens on librivox_0870 (WER vs the final transcript / vs the reference):", ""]
    for name, res in summary["models"].items():
        lines += [
            f"- {name} layer {r['layer']}: {r['wer_vs_final']:.2f} / {r['wer_vs_reference']:.2f}"
            f"{' (loop)' if r['looping'] else ''}: {r['text'][:80]!r}"
            for r in res["encoder_lens"]
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
