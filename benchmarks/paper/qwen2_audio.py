"""The seed paper's Qwen2-Audio experiments, prepared for a GPU and the real checkpoint:

    python benchmarks/paper/qwen2_audio.py --data ../shared/data/voxlingua107-dev-subset \\
        --model Qwen/Qwen2-Audio-7B-Instruct --device cuda --dtype bfloat16

    python benchmarks/paper/qwen2_audio.py --data DIR --random-model   # CPU smoke test, no weights

1. Logit lens over the language model while it transcribes: for each clip, the block from which
   the lens's top token is the final one, per generated position (the paper's saturation).
2. Probes: the clip's language (``clips.tsv``: ``path``, ``language``, ``video``; groups = video,
   so every probe is scored on videos it never saw) from the mean over audio positions of every
   audio-encoder layer, the projected audio embeddings, and every language-model layer at the
   end of the prompt; with the majority baseline, the shuffled-label control and per-fold spread
   that ``train_probes`` reports.
3. Repetition: clips tiled from a one-second piece (which audio LLMs tend to loop on) are
   transcribed greedily; for each language-model layer, the text positions are stopped from
   attending to the audio positions (the analogue of silencing Whisper's cross-attention in that
   layer), and the share of looping transcripts that stop looping is reported beside the same
   intervention on a random layer-sized control (the same number of positions hidden at random).

With ``--random-model`` everything runs on a small random model (no weights needed): a check
that the script works, not a result. Writes ``results/qwen2_audio[_random].json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hooked_whisper import HookedQwen2Audio, load_audio
from hooked_whisper.config import HookedQwen2AudioConfig, HookedWhisperConfig
from hooked_whisper.decoding.repetition import is_looping
from hooked_whisper.lens import logit_lens
from hooked_whisper.probing import extract_activations, train_probes

HERE = Path(__file__).parent


def random_model() -> HookedQwen2Audio:
    """A small random Qwen2-Audio whose audio placeholder is the last id, for smoke runs."""
    audio = HookedWhisperConfig(d_model=64, n_heads=2, d_head=32, n_encoder_layers=2, n_decoder_layers=0, n_mels=128)
    cfg = HookedQwen2AudioConfig(
        audio=audio, d_model=96, n_layers=2, n_heads=4, n_key_value_heads=2, d_mlp=160, d_vocab=320, audio_token_id=319
    )
    torch.manual_seed(0)
    return HookedQwen2Audio(cfg).eval()


def prompt_for(model: HookedQwen2Audio) -> object:
    """The transcription prompt: text when the checkpoint has a tokenizer, else a few ids
    around one audio placeholder (random models)."""
    return None if model.tokenizer is not None else [1, 2, model.cfg.audio_token_id, 3]


def read_clips(data: Path, limit: int | None) -> list[dict]:
    with open(data / "clips.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for row in rows:
        row["path"] = str(data / row["path"])
    random.Random(0).shuffle(rows)
    return rows[:limit] if limit else rows


def lens_study(model, clips: list[dict], max_new_tokens: int) -> list[dict]:
    out = []
    for row in tqdm(clips, desc="logit lens", unit="clip"):
        audio = load_audio(row["path"])[: 30 * 16000]
        tokens = model.generate(audio, prompt=prompt_for(model), max_new_tokens=max_new_tokens, sample_rate=16000)
        with torch.no_grad():
            _, cache = model.run_with_cache(audio, tokens[:, :-1], sample_rate=16000)
        lens = logit_lens(model, cache, k=1)
        n_new = tokens.shape[1] - model.tokens_for(model.to_mel(audio, 16000), prompt_for(model)).shape[1]
        out.append({"clip": row["path"], "saturation_block": lens.saturation_layer[0, -n_new:].tolist()})
    return out


def probe_study(model, clips: list[dict], batch_size: int) -> list[dict]:
    hooks = [f"encoder_blocks.{l}.hook_resid_post" for l in range(model.cfg.audio.n_encoder_layers)]
    hooks += ["hook_audio_embeds"] + [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    audio = [load_audio(r["path"])[: 30 * 16000] for r in clips]
    store = extract_activations(
        model, audio, hooks, decoder_pooling="prompt_end", batch_size=batch_size, sample_rate=16000
    ) if model.tokenizer is not None else extract_activations(
        model, audio, hooks[:-model.cfg.n_layers], batch_size=batch_size, sample_rate=16000
    )  # fmt: skip
    report = train_probes(store, [r["language"] for r in clips], groups=[r["video"] for r in clips], folds=5)
    return [vars(r) for r in report.results]


def hide_audio_from_text(model, slots: torch.Tensor, first_text: int):
    """A hook on attention scores: text positions (from ``first_text`` on) cannot attend to the
    positions in ``slots``."""

    def hook_fn(scores: torch.Tensor, hook) -> torch.Tensor:
        queries = model.decode_offset + torch.arange(scores.shape[2], device=scores.device)
        keys = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        keys[slots[slots < scores.shape[-1]]] = True
        hidden = (queries >= first_text)[:, None] & keys[None, :]
        return scores.masked_fill(hidden, float("-inf"))

    return hook_fn


def repetition_study(model, clips: list[dict], max_new_tokens: int, seed: int = 0) -> dict:
    prompt = prompt_for(model)
    looping = []
    for row in tqdm(clips, desc="finding loops", unit="clip"):
        piece = load_audio(row["path"])[16000:32000]
        if len(piece) < 16000:
            continue
        tiled = piece.repeat(20)  # 20 s of the same second
        tokens = model.generate(tiled, prompt=prompt, max_new_tokens=max_new_tokens, sample_rate=16000)
        full_prompt = model.tokens_for(model.to_mel(tiled, 16000), prompt)
        if is_looping(tokens[0, full_prompt.shape[1] :].tolist()):
            looping.append((tiled, full_prompt))
    rng = torch.Generator().manual_seed(seed)
    rows = []
    for layer in tqdm(range(model.cfg.n_layers), desc="interventions", unit="layer"):
        broken = control = 0
        for tiled, full_prompt in looping:
            slots = (full_prompt[0] == model.cfg.audio_token_id).nonzero().flatten()
            first_text = int(slots.max()) + 1
            random_slots = torch.randperm(first_text, generator=rng)[: len(slots)]
            for which, hidden in (("audio", slots), ("control", random_slots)):
                hook = (f"blocks.{layer}.attn.hook_attn_scores", hide_audio_from_text(model, hidden, first_text))
                tokens = model.generate(
                    tiled, prompt=full_prompt, max_new_tokens=max_new_tokens, fwd_hooks=[hook], sample_rate=16000
                )
                still = is_looping(tokens[0, full_prompt.shape[1] :].tolist())
                if not still:
                    broken += which == "audio"
                    control += which == "control"
        n = max(len(looping), 1)
        rows.append(
            {"layer": layer, "loops_broken": broken / n, "control_broken": control / n, "n_loops": len(looping)}
        )
    return {"n_looping_inputs": len(looping), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder with clips.tsv (path, language, video)")
    parser.add_argument("--model", default="Qwen/Qwen2-Audio-7B-Instruct")
    parser.add_argument("--random-model", action="store_true", help="smoke test on a small random model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--clips", type=int, default=None, help="use the first N clips (after a fixed shuffle)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    if args.random_model:
        model = random_model()
    else:
        model = HookedQwen2Audio.from_pretrained(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    clips = read_clips(args.data, args.clips)
    results = {
        "model": "random" if args.random_model else args.model,
        "n_clips": len(clips),
        "lens": lens_study(model, clips[:20], args.max_new_tokens),
        "probes": probe_study(model, clips, args.batch_size),
        "repetition": repetition_study(model, clips[:50], args.max_new_tokens),
    }
    out = HERE / "results" / f"qwen2_audio{'_random' if args.random_model else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
