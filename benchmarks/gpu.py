"""The library on a GPU, in one run of at most a few minutes: parity at every hook, speed and
memory at large-v3 and Qwen2-Audio-7B shapes against Hugging Face, and extraction throughput.

1. Parity: tiny.en and base on the test clips, every hook Hugging Face exposes (each layer's
   LayerNorm, q/k/v projection, attention and MLP outputs, residual stream, attention patterns,
   logits; read with forward hooks on its modules) against Hugging Face eager on the same device
   in float32, within float32's spread measured against a float64 run of ours there; and greedy
   tokens in bfloat16 equal to float32's.
2. Speed: a large-v3-shaped Whisper and a Qwen2-Audio-7B-shaped audio LLM with random weights
   (speed does not depend on the values): forward against Hugging Face sdpa; ``run_with_cache``
   of every hook and of the residual stream only against Hugging Face eager returning every
   hidden state and attention map; ``generate`` of a fixed number of tokens and batched
   ``transcribe`` (one 30 s window each) against Hugging Face ``generate``; float32 and
   bfloat16; batch 1, 8, 32; peak memory of each (the CUDA allocator's peak above what was in
   use before the run).
3. Extraction: ``extract_activations`` into shards (residual stream after every encoder layer,
   mean over the audio frames) against what a paper's code does: the Hugging Face feature
   extractor, the encoder with ``output_hidden_states``, the same pooling, ``safetensors`` files.

Times are medians of runs that alternate between the two libraries in one process. Results are
written after every row, so a run stopped by a time limit leaves what it measured; rows that
no longer fit in ``--budget-s`` are listed as skipped. An out-of-memory row is recorded as such.

    python benchmarks/gpu.py --device cuda                      # on a GPU, about 8 minutes
    python benchmarks/gpu.py --device cpu --tiny --out /tmp/gpu # small shapes, end to end on the CPU
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from benchmarks.common import DATA, RESULTS, alternated_times, machine, markdown_table  # noqa: E402
from benchmarks.performance import peak_extra_mib  # noqa: E402
from hooked_whisper import HookedQwen2Audio, HookedWhisper, HookedWhisperConfig, load_audio  # noqa: E402
from hooked_whisper.config import HookedQwen2AudioConfig  # noqa: E402
from hooked_whisper.probing import extract_activations  # noqa: E402
from tests.support import float32_spread_check  # noqa: E402
from weights_conversion import save_hf_folder  # noqa: E402

CLIPS = sorted(p.name for p in DATA.glob("*.wav"))
TARGETS = {
    "forward_bf16_vs_hf_sdpa": ("<=", 1.0),
    "cache_every_hook_vs_hf_eager_all_outputs": ("<=", 0.8),
    "extraction_vs_hf_hooks": (">=", 2.0),
    "large_v3_residual_cache_batch8_gib": ("<=", 80.0),
}
# Large-v3 and Qwen2-Audio-7B as Hugging Face configs; --tiny swaps in shapes a CPU runs in seconds.
WHISPER_SHAPES = {
    "large-v3": dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                     decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128,
                     vocab_size=51866),
    "tiny-random": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=256, decoder_ffn_dim=256, num_mel_bins=128,
                        vocab_size=51866),
}  # fmt: skip
# --tiny's parity model: random, of an English-only shape whose vocabulary ships with the library.
WHISPER_SHAPES["tiny-random-en"] = WHISPER_SHAPES["tiny-random"] | dict(num_mel_bins=80, vocab_size=51864)
QWEN_SHAPES = {
    "qwen2-audio-7b": dict(
        audio=dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120),
        text=dict(vocab_size=156032, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, intermediate_size=11008),
    ),
    "tiny-random-audio-llm": dict(
        audio=dict(d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=256),
        text=dict(vocab_size=512, hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=192),
    ),
}  # fmt: skip
AUDIO_TOKEN = 151646


class Run:
    """The results so far, written to ``out/gpu.{json,md}`` after every row."""

    def __init__(self, args):
        self.args, self.start = args, time.perf_counter()
        self.data = {"machine": machine(), "device": device_name(args.device), "args": vars(args)}
        self.data |= {"parity": [], "bfloat16": [], "speed": [], "extraction": [], "skipped": [], "complete": False}

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.start)

    def add(self, section: str, row: dict) -> None:
        row = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
        self.data[section].append(row)
        print(f"[{time.perf_counter() - self.start:6.1f}s] {section}: {row}", flush=True)
        self.save()

    def skip(self, what: str) -> None:
        self.data["skipped"].append(what)
        print(f"skipped (time budget): {what}", flush=True)

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        self.data["targets"] = targets(self.data)
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu.json").write_text(json.dumps(self.data, indent=2))
        (out / "gpu.md").write_text(markdown(self.data))


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return device


def free(device: str) -> None:
    """Hand the GPU memory of finished runs back (the CPU's is measured per run as it is)."""
    if device.startswith("cuda"):
        import gc

        gc.collect()
        torch.cuda.empty_cache()


# 1. Parity on the device --------------------------------------------------------------------


def hf_module_sites(cfg: HookedWhisperConfig) -> dict[str, tuple[str, bool]]:
    """Our hook name -> (the Hugging Face module whose output holds it, whether to split heads)."""
    sites = {"hook_encoder_out": ("model.encoder.layer_norm", False)}
    sites["decoder_ln_final.hook_normalized"] = ("model.decoder.layer_norm", False)
    for stack, n in (("encoder", cfg.n_encoder_layers), ("decoder", cfg.n_decoder_layers)):
        for l in range(n):
            ours, hf = f"{stack}_blocks.{l}", f"model.{stack}.layers.{l}"
            sites[f"{ours}.ln1.hook_normalized"] = (f"{hf}.self_attn_layer_norm", False)
            for x in "qkv":
                sites[f"{ours}.attn.hook_{x}"] = (f"{hf}.self_attn.{x}_proj", True)
            sites[f"{ours}.hook_attn_out"] = (f"{hf}.self_attn.out_proj", False)
            mlp_ln = "ln2"
            if stack == "decoder":
                sites[f"{ours}.ln2.hook_normalized"] = (f"{hf}.encoder_attn_layer_norm", False)
                for x in "qkv":
                    sites[f"{ours}.cross_attn.hook_{x}"] = (f"{hf}.encoder_attn.{x}_proj", True)
                sites[f"{ours}.hook_cross_attn_out"] = (f"{hf}.encoder_attn.out_proj", False)
                mlp_ln = "ln3"
            sites[f"{ours}.{mlp_ln}.hook_normalized"] = (f"{hf}.final_layer_norm", False)
            sites[f"{ours}.mlp.hook_pre"] = (f"{hf}.fc1", False)
            sites[f"{ours}.hook_mlp_out"] = (f"{hf}.fc2", False)
            sites[f"{ours}.hook_resid_post"] = (hf, False)
    return sites


def hf_activations(hf, sites: dict, n_heads: int, mel: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Hugging Face eager on ``mel`` and ``tokens``: the output of each module in ``sites``,
    attention patterns and logits, under our hook names."""
    modules = dict(hf.named_modules())
    got: dict[str, torch.Tensor] = {}
    handles = []
    for ours, (name, split) in sites.items():

        def keep(module, args, out, ours=ours, split=split):
            out = out[0] if isinstance(out, tuple) else out
            got[ours] = out.unflatten(-1, (n_heads, -1)) if split else out

        handles.append(modules[name].register_forward_hook(keep))
    try:
        out = hf(input_features=mel, decoder_input_ids=tokens, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    for l, pattern in enumerate(out.encoder_attentions):
        got[f"encoder_blocks.{l}.attn.hook_pattern"] = pattern
    for l, (pattern, cross) in enumerate(zip(out.decoder_attentions, out.cross_attentions)):
        got[f"decoder_blocks.{l}.attn.hook_pattern"] = pattern
        got[f"decoder_blocks.{l}.cross_attn.hook_pattern"] = cross
    got["logits"] = out.logits
    return got


def parity_pair(name: str, device: str) -> tuple[HookedWhisper, torch.nn.Module]:
    """Our model and Hugging Face's with the same weights: a bundled checkpoint by name, or a
    random one of a ``WHISPER_SHAPES`` shape (built by Hugging Face, converted to ours)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    if name in WHISPER_SHAPES:
        torch.manual_seed(0)
        hf = WhisperForConditionalGeneration(WhisperConfig(**WHISPER_SHAPES[name]))
        with tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(tmp)
            model = HookedWhisper.from_pretrained(tmp, device=device)
    else:
        model = HookedWhisper.from_pretrained(name, device=device)
        with tempfile.TemporaryDirectory() as tmp:
            hf = WhisperForConditionalGeneration.from_pretrained(save_hf_folder(model, tmp))
    hf.config._attn_implementation = "eager"
    return model, hf.to(device).eval()


def parity(run: Run, name: str, clips: list[str], new_tokens: int) -> None:
    """Every hook Hugging Face exposes, on each clip reading its greedy transcript (a random
    model's: its first ``new_tokens``), within 4x float32's error against our float64 run."""
    device = run.args.device
    model, hf = parity_pair(name, device)
    exact = copy.deepcopy(model).double()
    sites = hf_module_sites(model.cfg)
    worst: dict[str, float] = {}  # hook -> the largest diff / bound over the clips
    failures: list[str] = []
    cap = {"max_new_tokens": new_tokens} if name in WHISPER_SHAPES else {}  # a random model rarely ends
    with torch.inference_mode():
        for clip in clips:
            mel = model.to_mel(DATA / clip).mel
            tokens = model.generate(mel, **cap)[:, :-1]
            ref = hf_activations(hf, sites, model.cfg.n_heads, mel, tokens)
            logits, cache = model.run_with_cache(mel, tokens, names_filter=ref.__contains__)
            exact_logits, exact_cache = exact.run_with_cache(mel.double(), tokens, names_filter=ref.__contains__)
            ours = {**cache.cache_dict, "logits": logits}
            truth = {**exact_cache.cache_dict, "logits": exact_logits}
            for hook, reference in ref.items():  # the test suite's bound: 4x float32's error on the reference
                diff, bound, error = float32_spread_check(ours[hook], reference, truth[hook], factor=4.0)
                if diff > bound:
                    failures.append(f"{clip} {hook}: differ by {diff:.3g}, over {bound:.3g} (error {error:.3g})")
                worst[hook] = max(worst.get(hook, 0.0), diff / bound)
    hardest = max(worst, key=worst.get)
    run.add(
        "parity",
        {
            "model": name,
            "clips": len(clips),
            "hooks_compared": len(worst),
            "every_hook_within_spread": not failures,
            "worst_hook": hardest,
            "worst_diff_over_bound": worst[hardest],
            "failures": failures[:5],
        },
    )
    del model, exact, hf
    free(device)


def bfloat16_tokens(run: Run, name: str, clips: list[str]) -> None:
    """Greedy tokens of a real checkpoint in bfloat16 against float32's, clip by clip."""
    model = HookedWhisper.from_pretrained(name, device=run.args.device)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    with torch.inference_mode():
        same = [torch.equal(bf16.generate(mel), model.generate(mel)) for mel in (model.to_mel(DATA / c) for c in clips)]
    run.add("bfloat16", {"model": name, "clips": len(clips), "greedy_equals_fp32": all(same),
                         "clips_equal": f"{sum(same)}/{len(same)}"})  # fmt: skip
    del model, bf16
    free(run.args.device)


# 2. Speed and memory at large shapes ---------------------------------------------------------


def timed_pair(run: Run, row: dict, ours, reference, repeats: int) -> None:
    """Alternated median times and peak memory of ``ours`` and ``reference``. Where the pair does
    not fit in memory, each side is measured alone, so the one that fits still has its numbers;
    the other is recorded as out of memory."""
    fits = True
    try:
        times = alternated_times({"ours": ours, "ref": reference}, repeats, not run.args.tiny)
        row |= {"ours_s": times["ours"], "ref_s": times["ref"], "ratio": times["ours"] / times["ref"]}
        row |= {"ours_peak_mib": peak_extra_mib(ours), "ref_peak_mib": peak_extra_mib(reference)}
    except torch.OutOfMemoryError:
        fits = False  # retried below, once the error (and the frames holding its tensors) is gone
    free(run.args.device)
    if not fits:
        notes = []
        for side, fn in (("ours", ours), ("ref", reference)):
            try:
                row[f"{side}_s"] = alternated_times({side: fn}, repeats, not run.args.tiny)[side]
                row[f"{side}_peak_mib"] = peak_extra_mib(fn)
            except torch.OutOfMemoryError:
                notes.append(f"{side}: out of memory")
            free(run.args.device)
        row["note"] = "; ".join(notes)
    run.add("speed", row)


def time_parts(run: Run, base: dict, parts: dict, repeats: int) -> None:
    """One speed row per part (ours, the reference, what the reference is), while time is left."""
    for part, (ours, ref, against) in parts.items():
        if run.left() < 10:
            run.skip(f"{base['model']} {base['dtype']} batch {base['batch']} {part}")
            continue
        timed_pair(run, base | {"part": part, "against": against}, ours, ref, repeats)


def whisper_speed(run: Run, shape: str, dtype: torch.dtype, batches: list[int], new_tokens: int) -> None:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    device, repeats = run.args.device, run.args.repeats
    hf_cfg = WhisperConfig(**WHISPER_SHAPES[shape])
    with torch.device(device):
        hf = WhisperForConditionalGeneration(hf_cfg).to(dtype).eval()
        model = HookedWhisper(HookedWhisperConfig.from_hf_config(hf_cfg.to_dict())).to(dtype).eval()
    clip = load_audio(DATA / "librivox_0870.wav")
    one_mel = model.to_mel(clip, 16000).mel
    language = "en" if "en" in model.special.languages else sorted(model.special.languages)[0]  # random vocab
    prompt = torch.tensor([model.prompt_tokens(language)], device=device)
    n_prompt = prompt.shape[1]
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    def attn(impl: str) -> None:
        hf.config._attn_implementation = impl
        hf.model.config._attn_implementation = impl

    def hf_all_outputs(mel, tokens):
        attn("eager")
        hf(input_features=mel, decoder_input_ids=tokens, output_hidden_states=True, output_attentions=True)

    def hf_forward(mel, tokens):
        attn("sdpa")
        hf(input_features=mel, decoder_input_ids=tokens)

    def hf_generate(mel):
        attn("sdpa")
        hf.generate(input_features=mel, decoder_input_ids=prompt.expand(mel.shape[0], -1), **gen)

    with torch.inference_mode():
        for batch in batches:
            mel = one_mel.expand(batch, -1, -1).contiguous()
            tokens = torch.randint(0, 50000, (batch, n_prompt + new_tokens), device=device)
            tokens[:, :n_prompt] = prompt
            base = {"model": shape, "dtype": str(dtype).removeprefix("torch."), "batch": batch}
            parts = {
                "forward": (partial(model, mel, tokens), partial(hf_forward, mel, tokens), "HF sdpa"),
                "cache every hook": (
                    partial(model.run_with_cache, mel, tokens),
                    partial(hf_all_outputs, mel, tokens),
                    "HF eager, all outputs",
                ),
                "cache residual": (
                    partial(model.run_with_cache, mel, tokens, names_filter=lambda n: "resid" in n),
                    partial(hf_all_outputs, mel, tokens),
                    "HF eager, all outputs",
                ),
                "generate": (
                    partial(model.generate, mel, language=language, max_new_tokens=new_tokens),
                    partial(hf_generate, mel),
                    f"HF generate sdpa, {new_tokens} tokens",
                ),
                "transcribe": (
                    partial(
                        model.transcribe,
                        [clip] * batch,
                        language=language,
                        batch_size=batch,
                        temperature=0.0,
                        max_new_tokens=new_tokens,
                        condition_on_previous_text=False,
                        sample_rate=16000,
                    ),
                    partial(hf_generate, mel),
                    "HF generate sdpa on ready mels",
                ),
            }
            time_parts(run, base, parts, repeats)


def qwen_speed(run: Run, shape: str, dtype: torch.dtype, batches: list[int], new_tokens: int) -> None:
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    device, repeats = run.args.device, run.args.repeats
    spec = QWEN_SHAPES[shape]
    hf_cfg = Qwen2AudioConfig(
        audio_config=spec["audio"] | {"num_mel_bins": 128},
        text_config=spec["text"],
        audio_token_index=min(AUDIO_TOKEN, spec["text"]["vocab_size"] - 1),
    )
    with torch.device(device):
        hf = Qwen2AudioForConditionalGeneration(hf_cfg).to(dtype).eval()
        model = HookedQwen2Audio(HookedQwen2AudioConfig.from_hf_config(hf_cfg.to_dict())).to(dtype).eval()
    features = model.to_mel(load_audio(DATA / "librivox_0870.wav"), 16000)
    text = [1, 5, 7, 3]
    ids = model.tokens_for(features, [text + [hf_cfg.audio_token_index] + text])  # one placeholder per position

    def attn(impl: str) -> None:
        for config in (hf.config, hf.config.audio_config, hf.config.text_config):
            config._attn_implementation = impl

    def hf_call(inputs, **kw):
        attn("eager" if kw.get("output_attentions") else "sdpa")
        hf(**inputs, **kw)

    def hf_generate(inputs):
        attn("sdpa")
        hf.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    with torch.inference_mode():
        for batch in batches:
            feats, tokens = features.expand(batch), ids.expand(batch, -1)
            mask = (torch.arange(feats.mel.shape[-1], device=device)[None] < feats.n_frames[:, None]).long()
            inputs = dict(input_ids=tokens, input_features=feats.mel, feature_attention_mask=mask)
            base = {"model": shape, "dtype": str(dtype).removeprefix("torch."), "batch": batch}
            all_outputs = partial(hf_call, inputs, output_hidden_states=True, output_attentions=True)
            parts = {
                "forward": (partial(model, feats, tokens), partial(hf_call, inputs), "HF sdpa"),
                "cache every hook": (
                    partial(model.run_with_cache, feats, tokens),
                    all_outputs,
                    "HF eager, all outputs",
                ),
                "cache residual": (
                    partial(model.run_with_cache, feats, tokens, names_filter=lambda n: "resid" in n),
                    all_outputs,
                    "HF eager, all outputs",
                ),
                "generate": (
                    partial(model.generate, feats, prompt=tokens, max_new_tokens=new_tokens),
                    partial(hf_generate, inputs),
                    f"HF generate sdpa, {new_tokens} tokens",
                ),
            }
            time_parts(run, base, parts, repeats)


# 3. Extraction throughput ---------------------------------------------------------------------


def extraction(run: Run, shape: str, n_clips: int, batch: int) -> None:
    """Clips per second and GB written per minute of ``extract_activations`` (residual stream
    after every encoder layer, mean over the audio frames, shards) against a paper's own loop."""
    from safetensors.torch import save_file
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    device = run.args.device
    hf_cfg = WhisperConfig(**WHISPER_SHAPES[shape])
    dtype = torch.float32
    with torch.device(device):
        hf = WhisperForConditionalGeneration(hf_cfg).to(dtype).eval()
        model = HookedWhisper(HookedWhisperConfig.from_hf_config(hf_cfg.to_dict())).to(dtype).eval()
    hf.config._attn_implementation = "sdpa"
    clips = [DATA / CLIPS[i % len(CLIPS)] for i in range(n_clips)]
    hooks = [model.hook_name("encoder", l, "hook_resid_post") for l in range(model.cfg.n_encoder_layers)]
    extractor = WhisperFeatureExtractor(feature_size=hf_cfg.num_mel_bins)

    def ours(folder: Path) -> None:
        extract_activations(model, clips, hooks, batch_size=batch, out_dir=folder, shard_size=batch, progress=False)

    def reference(folder: Path) -> None:  # a paper's loop: features on the CPU, hidden states, pooled, saved
        folder.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(clips), batch):
            waves = [load_audio(c).numpy() for c in clips[start : start + batch]]
            feats = extractor(waves, sampling_rate=16000, return_tensors="pt").input_features.to(device, dtype)
            with torch.inference_mode():  # (Hugging Face's last entry is after the final LayerNorm: as many tensors)
                states = hf.model.encoder(feats, output_hidden_states=True).hidden_states[1:]
            frames = [min(1500, len(w) // 320) for w in waves]  # 50 encoder frames a second
            pooled = {
                f"layer{l}": torch.stack([h[i, :n].mean(0) for i, n in enumerate(frames)]).cpu()
                for l, h in enumerate(states)
            }
            save_file(pooled, str(folder / f"shard{start // batch:05d}.safetensors"))

    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(10**6))

        def fresh(fn):
            return lambda: fn(Path(tmp) / f"run{next(counter)}")

        try:
            times = alternated_times(
                {"ours": fresh(ours), "ref": fresh(reference)}, run.args.repeats, not run.args.tiny
            )
            written = {
                kind: sum(f.stat().st_size for f in (Path(tmp) / f"run{i}").rglob("*.safetensors"))
                for i, kind in ((0, "ours"), (1, "ref"))
            }
            row = {"model": shape, "clips": n_clips, "batch": batch, "hooks": len(hooks)}
            row |= {"ours_clips_per_s": n_clips / times["ours"], "ref_clips_per_s": n_clips / times["ref"]}
            row |= {"ours_gb_per_min": written["ours"] / 1e9 / times["ours"] * 60}
            row |= {"ref_gb_per_min": written["ref"] / 1e9 / times["ref"] * 60}
            row["speedup"] = times["ref"] / times["ours"]
        except torch.OutOfMemoryError as err:
            row = {"model": shape, "clips": n_clips, "batch": batch, "note": f"out of memory: {err}"[:140]}
    run.add("extraction", row)


# Targets and the report ---------------------------------------------------------------------


def targets(data: dict) -> dict:
    speed = [r for r in data["speed"] if "ratio" in r]
    ratio = {
        "forward_bf16_vs_hf_sdpa": [r["ratio"] for r in speed if r["part"] == "forward" and r["dtype"] == "bfloat16"],
        "cache_every_hook_vs_hf_eager_all_outputs": [r["ratio"] for r in speed if r["part"] == "cache every hook"],
        "extraction_vs_hf_hooks": [r["speedup"] for r in data["extraction"] if "speedup" in r],
        "large_v3_residual_cache_batch8_gib": [
            r["ours_peak_mib"] / 1024 if "ours_peak_mib" in r else float("inf")  # inf: ours ran out of memory
            for r in data["speed"]
            if r["part"] == "cache residual" and r["batch"] == 8 and r["model"] in ("large-v3", "tiny-random")
        ],
    }
    out = {}
    for name, (sense, goal) in TARGETS.items():
        values = ratio[name]
        if not values:
            out[name] = {"goal": f"{sense} {goal}", "measured": None, "met": None}
            continue
        worst = max(values) if sense == "<=" else min(values)
        out[name] = {"goal": f"{sense} {goal}", "worst": worst, "range": [min(values), max(values)]}
        out[name]["met"] = worst <= goal if sense == "<=" else worst >= goal
    return out


def markdown(data: dict) -> str:
    ms = ".3f"
    parts = [
        f"# The library on {data['device']}\n\n{data['machine']}; {data['elapsed_s']} s; "
        f"{'complete' if data['complete'] else 'INCOMPLETE (stopped or still running)'}.\n",
        markdown_table(
            "## Parity against Hugging Face eager on the device (float32, every hook it exposes)",
            [
                "model",
                "clips",
                "hooks_compared",
                "every_hook_within_spread",
                "worst_hook",
                "worst_diff_over_bound",
            ],
            data["parity"],
            {"worst_diff_over_bound": ".2f"},
        ),
        markdown_table(
            "## Greedy tokens in bfloat16 against float32",
            ["model", "clips", "greedy_equals_fp32", "clips_equal"],
            data["bfloat16"],
            {},
        ),
        markdown_table(
            "## Speed and peak memory (ratio = ours / reference; peak MiB above the memory in use before)",
            [
                "model",
                "dtype",
                "batch",
                "part",
                "against",
                "ours_s",
                "ref_s",
                "ratio",
                "ours_peak_mib",
                "ref_peak_mib",
                "note",
            ],
            data["speed"],
            {"ours_s": ms, "ref_s": ms, "ratio": ".2f", "ours_peak_mib": ".0f", "ref_peak_mib": ".0f"},
        ),
        markdown_table(
            "## Extraction (speedup = reference time / ours)",
            [
                "model",
                "clips",
                "batch",
                "hooks",
                "ours_clips_per_s",
                "ref_clips_per_s",
                "ours_gb_per_min",
                "ref_gb_per_min",
                "speedup",
                "note",
            ],
            data["extraction"],
            {
                "ours_clips_per_s": ".2f",
                "ref_clips_per_s": ".2f",
                "ours_gb_per_min": ".4f",
                "ref_gb_per_min": ".4f",
                "speedup": ".2f",
            },
        ),
        "## Targets\n\n"
        + "\n".join(f"- {name}: {json.dumps(value)}" for name, value in data["targets"].items())
        + ("\n\nSkipped for time: " + "; ".join(data["skipped"]) if data["skipped"] else ""),
    ]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="small random shapes, one clip, no warm-up: a check of the script on the CPU",
    )
    parser.add_argument("--out", default=str(RESULTS), help="folder for gpu.json and gpu.md")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds after the warm-up (default 3, tiny 1)")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting rows after this (default 450)")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (1 if args.tiny else 3)
    args.budget_s = args.budget_s or (120.0 if args.tiny else 450.0)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device here; use --device cpu --tiny to check the script")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # generate's notes on length settings, once per call, drown the progress lines
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 products and convolutions, on both sides
    torch.backends.cudnn.allow_tf32 = False
    run = Run(args)
    if args.tiny:
        parity_models, bf16_models, clips = ["tiny-random-en"], ["tiny.en"], CLIPS[:1]
        whisper, qwen, batches, new_tokens = "tiny-random", "tiny-random-audio-llm", [1, 2], 4
        qwen_dtypes, extraction_clips = [torch.float32], (4, 2)
    else:
        parity_models = bf16_models = ["tiny.en", "base"]
        clips = CLIPS
        whisper, qwen, batches, new_tokens = "large-v3", "qwen2-audio-7b", [1, 8, 32], 32
        qwen_dtypes, extraction_clips = [torch.bfloat16], (64, 16)
    for name in parity_models:
        parity(run, name, clips, new_tokens)
    for name in bf16_models:
        bfloat16_tokens(run, name, clips)
    # The rows the targets read first (bfloat16 forward, caches, extraction), then float32, then the audio LLM;
    # --tiny runs each path once: bfloat16 at batch 1, the rest at batch 2.
    whisper_speed(run, whisper, torch.bfloat16, batches[:1] if args.tiny else batches, new_tokens)
    free(args.device)  # each section's models are gone once it returns
    extraction(run, whisper, *extraction_clips)
    free(args.device)
    if not args.tiny:  # on the CPU, float32 runs the same code as bfloat16 (checked by the audio LLM's rows)
        whisper_speed(run, whisper, torch.float32, batches, new_tokens)
        free(args.device)
    for dtype in qwen_dtypes:
        if run.left() > 60 or args.tiny:
            qwen_speed(run, qwen, dtype, batches[1:] if args.tiny else batches, new_tokens)
            free(args.device)
        else:
            run.skip(f"{qwen} {dtype}")
    run.data["complete"] = True
    run.save()
    print((Path(args.out) / "gpu.md").read_text())
    return run.data


if __name__ == "__main__":
    main()
