"""The seed paper's probing studies on real speech, with held-out videos and controls:

    .venv/bin/python benchmarks/paper/probing.py --data ../shared/data/voxlingua107-dev-subset

The data folder holds ``clips.tsv`` (``path``, ``language``, ``video``) and the clips
(VoxLingua107's development set in the repository's copy: 10 languages x 40 clips, one video
each; real users download the full set from its site).

1. Language (the paper's accent probe in its multilingual form): 10 classes, groups = video,
   every encoder layer (mean over the audio frames), the conv stem and the log-mel input, and
   every decoder layer at the end of the transcription prompt (before any text is written).
2. Pitch class, the stand-in for the paper's gender probe: each clip's median F0, low below
   150 Hz, high above 185 Hz, the clips in between dropped. It is called pitch class everywhere:
   the data has no gender labels.
3. Noise: 100 clips (10 per language), each clean and mixed with real non-speech sound at 0, 5,
   10 or 20 dB SNR; clean vs noisy with groups = source clip (a clip and its noisy copy are
   always in the same fold), and the SNR of the noisy copies by ridge regression (R^2).
4. Speech vs non-speech: 80 speech clips against 80 real non-speech items of the same durations
   and loudness (RMS): pieces of five music tracks and sequences of instrument and effect sounds,
   groups = track (or the sound set) and video.

Non-speech sound comes from two Debian packages, fetched with ``apt-get download`` into the
cache folder: ``asterisk-moh-opsound-wav`` (five music-on-hold tracks, CC BY-SA 3.0, by
Macroform, Manolo Camp and Reno Project) and ``sound-icons`` (instrument and effect sounds,
GPL-2+).

Every probe reports its controls (``train_probes``: majority class, a permutation test, the
control task and selectivity, a 95% interval, the online code length) and is run three times:
on the real model, on a randomly initialised model of the same shape (does training matter?),
and its input rows (log-mel and conv stem) are the input baselines. Activations go through the
sharded store (``extract_activations(out_dir=...)``, resumable: a rerun reuses them).

Writes ``results/probing.{md,json}`` and one plot per study and model beside this file.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch
import torchaudio

sys.path.insert(0, str(Path(__file__).parent.parent.parent))
from benchmarks.common import debian_files  # noqa: E402
from hooked_whisper import HookedWhisper, load_audio  # noqa: E402
from hooked_whisper.extraction import Manifest  # noqa: E402
from hooked_whisper.plots import plot_probes  # noqa: E402
from hooked_whisper.probing import ProbeReport, extract_activations, train_probes  # noqa: E402

HERE = Path(__file__).parent
LOW_HZ, HIGH_HZ = 150.0, 185.0
PAPER = {  # Whisper large-v3 (32 layers), as secondary sources report the paper
    "language": "accent 97.0% (encoder layer 22)",
    "pitch class": "gender 94.6% (encoder layer 25)",
    "noise": "90.0% (encoder layer 27)",
    "speech vs non-speech": "100% (decoder layers 10-28)",
}


def read_clips(data: Path) -> list[dict]:
    with open(data / "clips.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or not {"path", "language", "video"} <= set(rows[0]):
        raise ValueError(f"{data / 'clips.tsv'} needs path, language and video columns")
    for row in rows:
        row["path"] = str((data / row["path"]).resolve())
    return rows


def median_f0(path: str) -> float:
    """Median fundamental frequency over the voiced-looking frames of a clip, in Hz."""
    wave = load_audio(path)
    f0 = torchaudio.functional.detect_pitch_frequency(wave[None], 16000, freq_low=60, freq_high=400)[0]
    voiced = f0[(f0 > 60) & (f0 < 400)]
    return float(voiced.median()) if len(voiced) else float("nan")


def debian_sounds(cache: Path) -> dict[str, list[torch.Tensor]]:
    """The non-speech sources, 16 kHz mono: each music track whole, and the sound-icons set."""
    unpacked = debian_files(cache / "debian", ["asterisk-moh-opsound-wav", "sound-icons"])
    sources = {p.stem: [load_audio(p)] for p in sorted(unpacked.rglob("moh/*.wav"))}
    sources["sound-icons"] = [load_audio(p) for p in sorted(unpacked.rglob("sound-icons/*.wav"))]
    return sources


def non_speech_like(clip: torch.Tensor, source: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    """A piece of ``source`` as long and as loud (RMS) as ``clip``: a random stretch of a track,
    or short sounds one after another with short gaps."""
    n = clip.shape[0]
    if len(source) == 1:
        track = source[0]
        start = int(torch.randint(0, max(1, track.shape[0] - n), (1,), generator=gen))
        piece = torch.nn.functional.pad(track[start : start + n], (0, max(0, n - (track.shape[0] - start))))
    else:
        parts, length = [], 0
        while length < n:
            sound = source[int(torch.randint(len(source), (1,), generator=gen))]
            gap = torch.zeros(int(torch.randint(800, 4800, (1,), generator=gen)))
            parts += [sound, gap]
            length += sound.shape[0] + gap.shape[0]
        piece = torch.cat(parts)[:n]
    return piece * clip.pow(2).mean().sqrt() / piece.pow(2).mean().sqrt().clamp(min=1e-8)


def mix(clip: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``clip`` plus ``noise`` scaled to the given signal-to-noise ratio."""
    gain = clip.pow(2).mean().sqrt() / noise.pow(2).mean().sqrt().clamp(min=1e-8) / 10 ** (snr_db / 20)
    return clip + gain * noise


def probe_hooks(model: HookedWhisper) -> list[str]:
    enc = [f"encoder_blocks.{l}.hook_resid_post" for l in range(model.cfg.n_encoder_layers)]
    dec = [f"decoder_blocks.{l}.hook_resid_post" for l in range(model.cfg.n_decoder_layers)]
    return ["hook_mel", "encoder_embed.hook_conv2", *enc, *dec]


def side(report: ProbeReport, hooks: list[str], n_layers: int) -> ProbeReport:
    rows = [r for r in report.results if r.hook in hooks]
    return ProbeReport(rows, report.classes, report.n, report.method, report.folds, report.permutations, n_layers)


def build_sets(clips: list[dict], sounds: dict[str, list[torch.Tensor]], seed: int = 0) -> dict[str, Manifest]:
    """The three extraction sets: every clip (language, pitch class), the noise study's clean and
    noisy pairs, and speech against non-speech."""
    gen = torch.Generator().manual_seed(seed)
    sets = {
        "voxlingua": Manifest([c["path"] for c in clips], [c["language"] for c in clips], [c["video"] for c in clips])
    }
    by_language: dict[str, list[dict]] = {}
    for c in clips:
        by_language.setdefault(c["language"], []).append(c)
    names = sorted(sounds)
    waves, labels, groups, snrs = [], [], [], []
    for k, c in enumerate(c for lang in sorted(by_language) for c in by_language[lang][:10]):
        clean = load_audio(c["path"])
        snr = (0.0, 5.0, 10.0, 20.0)[k % 4]
        noise = non_speech_like(clean, sounds[names[k % len(names)]], gen)
        waves += [clean, mix(clean, noise, snr)]
        labels += ["clean", "noisy"]
        groups += [c["path"], c["path"]]
        snrs += [None, snr]
    sets["noise"] = Manifest(waves, labels, groups)
    sets["noise"].snr = snrs  # type: ignore[attr-defined]
    speech = [c for lang in sorted(by_language) for c in by_language[lang][10:18]]
    waves, labels, groups = [], [], []
    for k, c in enumerate(speech):
        clip = load_audio(c["path"])
        name = names[k % len(names)]
        waves += [clip, non_speech_like(clip, sounds[name], gen)]
        labels += ["speech", "non-speech"]
        groups += [c["video"], name]
    sets["speech"] = Manifest(waves, labels, groups)
    return sets


def snr_r2(x: torch.Tensor, snr: torch.Tensor, folds: int = 5, seed: int = 0) -> tuple[float, float]:
    """Out-of-fold R^2 of a ridge regression of the SNR (each noisy clip its own group), and the
    same with the SNRs shuffled (the control)."""
    from hooked_whisper.probe_fitting import ridge_operator

    order = torch.randperm(len(snr), generator=torch.Generator().manual_seed(seed))
    fold_of = torch.empty(len(snr), dtype=torch.long)
    fold_of[order] = torch.arange(len(snr)) % folds

    def r2(target: torch.Tensor) -> float:
        predicted = torch.empty_like(target)
        for f in range(folds):
            test = fold_of == f
            centre = target[~test].mean()
            predicted[test] = ridge_operator(x[~test], x[test], 1.0) @ (target[~test] - centre) + centre
        return float(1 - ((predicted - target) ** 2).sum() / ((target - target.mean()) ** 2).sum())

    return r2(snr), r2(snr[torch.randperm(len(snr), generator=torch.Generator().manual_seed(seed + 1))])


def run_model(name: str, model: HookedWhisper, sets: dict[str, Manifest], clips: list[dict], cache: Path, args) -> dict:
    hooks = probe_hooks(model)
    n_enc = model.cfg.n_encoder_layers
    enc_hooks, dec_hooks = hooks[: 2 + n_enc], hooks[2 + n_enc :]
    stores = {}
    for set_name, manifest in sets.items():
        stores[set_name] = extract_activations(
            model, manifest, hooks, decoder_pooling="prompt_end", out_dir=cache / f"{name}-{set_name}",
            batch_size=8, shard_size=64, sample_rate=16000,
        )  # fmt: skip
        if stores[set_name].failed:
            print(f"{name} {set_name}: {len(stores[set_name].failed)} clips failed to load: {stores[set_name].failed}")
    by_clip = {c["path"]: c for c in clips}
    kept = [by_clip[c] for c in stores["voxlingua"].clips]
    pitched = [i for i, c in enumerate(kept) if c["pitch_class"] is not None]
    studies = {
        "language": ("voxlingua", None, [c["language"] for c in kept], [c["video"] for c in kept]),
        "pitch class": (
            "voxlingua", pitched, [kept[i]["pitch_class"] for i in pitched], [kept[i]["video"] for i in pitched]
        ),
        "noise": ("noise", None, stores["noise"].labels, stores["noise"].groups),
        "speech vs non-speech": ("speech", None, stores["speech"].labels, stores["speech"].groups),
    }  # fmt: skip
    out = {}
    for study, (set_name, rows, labels, groups) in studies.items():
        store = stores[set_name]
        features = {h: store[h] if rows is None else store[h][rows] for h in hooks}
        report = train_probes(features, labels, groups=groups, permutations=args.permutations, code_length=True)
        out[study] = {
            "encoder": side(report, enc_hooks, n_enc),
            "decoder": side(report, dec_hooks, model.cfg.n_decoder_layers),
            "n": len(labels),
            "classes": report.classes,
        }
    noisy = [i for i, label in enumerate(stores["noise"].labels) if label == "noisy"]
    snr = torch.tensor([sets["noise"].snr[i] for i in noisy])  # type: ignore[attr-defined]
    out["snr r2"] = {h: snr_r2(stores["noise"][h][noisy].float(), snr) for h in enc_hooks}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with clips.tsv (path, language, video)")
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--cache", type=Path, default=HERE / "activations", help="activation shards and sounds")
    args = parser.parse_args()
    clips = read_clips(args.data)
    for clip in clips:
        f0 = median_f0(clip["path"])
        clip["f0"] = f0
        clip["pitch_class"] = "low" if f0 < LOW_HZ else "high" if f0 > HIGH_HZ else None
    sets = build_sets(clips, debian_sounds(args.cache))
    reports: dict = {}
    for name in args.models:
        model = HookedWhisper.from_pretrained(name)
        torch.manual_seed(0)
        random_model = HookedWhisper(model.cfg, model.tokenizer, model.generation_config).eval()
        for label, m in ((name, model), (f"{name} (random init)", random_model)):
            reports[label] = run_model(label.replace(" (random init)", "-random"), m, sets, clips, args.cache, args)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    for study in STUDIES:
        chance = 1 / len(reports[args.models[0]][study]["classes"])
        for stack in ("encoder", "decoder"):
            plot_probes(
                {label: r[study][stack] for label, r in reports.items()},
                out / f"probing_{study.replace(' ', '_')}_{stack}.png",
                title=f"{study} ({stack}, held-out groups)",
                chance=chance,
            )
    results: dict = {"data": str(args.data), "n_clips": len(clips), "paper": PAPER, "models": {}}
    for label, r in reports.items():
        results["models"][label] = {
            study: {
                "n": r[study]["n"],
                "classes": [str(c) for c in r[study]["classes"]],
                **{stack: [vars(x) for x in r[study][stack].results] for stack in ("encoder", "decoder")},
            }
            for study in STUDIES
        } | {"snr r2": r["snr r2"]}
    (out / "probing.json").write_text(json.dumps(results, indent=1))
    (out / "probing.md").write_text(markdown(reports))
    print(markdown(reports))


STUDIES = ("language", "pitch class", "noise", "speech vs non-speech")


def markdown(reports: dict) -> str:
    lines = []
    for study in STUDIES:
        for label, r in reports.items():
            for stack in ("encoder", "decoder"):
                lines += [f"### {study}, {label}, {stack} (n = {r[study]['n']}, classes {r[study]['classes']})", ""]
                lines += [r[study][stack].table(), ""]
    lines += ["### SNR of the noisy copies, ridge regression R^2 (out of fold; control: SNRs shuffled)", ""]
    lines += ["| model | hook | R^2 | control |", "|---|---|---|---|"]
    for label, r in reports.items():
        lines += [f"| {label} | {h} | {a:.3f} | {b:.3f} |" for h, (a, b) in r["snr r2"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
