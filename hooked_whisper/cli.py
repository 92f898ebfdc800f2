"""Command line: ``hooked-whisper inspect CLIP``, ``hooked-whisper transcribe FILE...`` and
``hooked-whisper extract MANIFEST`` (one process, or one per GPU under ``torchrun``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hooked_whisper.decoding_options import DecodingOptions

# torch and the model are imported inside the commands, so that --help and argument errors
# answer at once.


def summarize_cache(cache) -> list[str]:
    """One line per kind of hook (layer indices folded into {l}) with its shape."""
    from hooked_whisper.hook_layout import layer_template

    kinds: dict[str, tuple[tuple[int, ...], int]] = {}
    for name, tensor in cache.items():
        kind = layer_template(name)
        shape, count = kinds.get(kind, (tuple(tensor.shape), 0))
        kinds[kind] = (shape, count + 1)
    width = max(len(k) for k in kinds)
    return [
        f"  {kind:<{width}}  {list(shape)}" + (f"  x{count} layers" if count > 1 else "")
        for kind, (shape, count) in kinds.items()
    ]


def inspect(args: argparse.Namespace) -> int:
    if not Path(args.clip).is_file():  # answered before torch is imported
        raise FileNotFoundError(f"no audio file at {args.clip}")
    import torch

    from hooked_whisper import HookedWhisper, load_audio
    from hooked_whisper.audio import N_SAMPLES, SAMPLE_RATE
    from hooked_whisper.lens import logit_lens
    from hooked_whisper.metrics import read_transcripts, word_error_rate

    clip = Path(args.clip)
    waveform = load_audio(clip)  # a missing or unreadable file is reported before the model loads
    model = HookedWhisper.from_pretrained(args.model)
    if waveform.shape[0] > N_SAMPLES:
        print(
            f"note: {clip} lasts {waveform.shape[0] / SAMPLE_RATE:.1f} s; inspecting its first 30 s "
            "(one forward pass sees one window; `hooked-whisper transcribe` reads it all)"
        )
        waveform = waveform[:N_SAMPLES]
    with torch.no_grad():
        logits, cache = model.run_with_cache(waveform, sample_rate=SAMPLE_RATE)
    tokens = cache["hook_tokens"][0]
    n_prompt = len(model.prompt_tokens("en" if model.cfg.is_multilingual else None))
    text = model.to_string(tokens[n_prompt:])
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    cfg = model.cfg
    print(
        f"model:      {args.model} ({cfg.d_model} wide, {cfg.n_encoder_layers} encoder + "
        f"{cfg.n_decoder_layers} decoder layers, {n_params:.1f}M parameters)"
    )
    print(f"clip:       {clip}")
    print(f"transcript: {text.strip()}")
    reference = read_transcripts(clip.parent).get(clip.name)
    if reference is not None:
        print(f"reference:  {reference}   (WER {word_error_rate(reference, text):.2f})")
    size = sum(t.numel() * t.element_size() for t in cache.values()) / 2**20
    print(f"\ncache: {len(cache)} activations, {size:.0f} MiB; logits {list(logits.shape)}")
    print("\n".join(summarize_cache(cache)))
    lens = logit_lens(model, cache)
    print("\ndecoder logit lens (top-1 token at each position; the last row is the model's prediction):")
    print("\n".join("  " + line for line in lens.table(model)))
    print(
        "  saturation block per position (-1: the embedding): "
        + " ".join(str(int(s)) for s in lens.saturation_layer[0])
    )
    if args.html:
        from hooked_whisper.views import clip_report

        report = clip_report(model, waveform, tokens, sample_rate=SAMPLE_RATE, name=clip.name)
        size = report.html(args.html).stat().st_size / 2**20
        print(f"\nclip report: {args.html} ({size:.1f} MiB, self-contained)")
    return 0


def format_time(seconds: float) -> str:
    minutes, seconds = divmod(seconds, 60)
    return f"{int(minutes):02d}:{seconds:05.2f}"


def transcribe(args: argparse.Namespace) -> int:
    """Transcribe every readable file; report each bad one on stderr (and in --json) and exit 1."""
    from hooked_whisper import HookedWhisper, load_audio
    from hooked_whisper.audio import SAMPLE_RATE
    from hooked_whisper.decoding_options import LONG_FORM_OPTIONS, DecodingOptions, cli_fields

    waveforms, failures = {}, {}
    for f in args.files:  # every file is checked before the model loads
        try:
            waveforms[f] = load_audio(f)
        except (OSError, ValueError, TypeError) as err:
            failures[f] = str(err)
            print(f"hooked-whisper: {f}: {err}", file=sys.stderr)
    # The decoding flags are DecodingOptions fields by name, merged into transcribe's defaults
    # (which decode timestamps, as openai-whisper's command line does: without them Whisper
    # tends to stop after the first sentence of a long window; they are shown when asked).
    # A flag left out keeps transcribe's default (its temperature schedule, say).
    given = {f.name: getattr(args, f.name) for f, _ in cli_fields() if getattr(args, f.name) is not None}
    options = DecodingOptions.merged(LONG_FORM_OPTIONS, given)
    results = []
    if waveforms:
        model = HookedWhisper.from_pretrained(args.model)
        files = list(waveforms)
        for start in range(0, len(files), args.batch_size):  # a batch at a time, printed as it finishes
            batch = files[start : start + args.batch_size]
            transcripts = model.transcribe(
                [waveforms[f] for f in batch],
                options,
                sample_rate=SAMPLE_RATE,
                word_timestamps=args.word_timestamps,
                batch_size=args.batch_size,
                fallback=args.fallback,
            )
            for f, result in zip(batch, transcripts):
                if args.json:
                    results.append({"file": f, **result.to_dict()})
                elif args.timestamps or args.word_timestamps:
                    print(f"{f} ({result.language})")
                    for seg in result.segments:
                        print(f"[{format_time(seg.start)} --> {format_time(seg.end)}]{seg.text}")
                        for w in seg.words or []:
                            print(f"    {format_time(w.start)} {format_time(w.end)} {w.probability:.2f}{w.word}")
                else:
                    print(f"{f}\t{result.text.strip()}")
    if args.json:
        results += [{"file": f, "error": message} for f, message in failures.items()]
        order = {f: i for i, f in enumerate(args.files)}
        results.sort(key=lambda r: order[r["file"]])
        print(json.dumps(results if len(results) > 1 else results[0], indent=2, ensure_ascii=False))
    return 1 if failures else 0


def extract(args: argparse.Namespace) -> int:
    """Pooled activations of every clip in a manifest into a folder of shards plus an index."""
    import os

    import torch

    from hooked_whisper import HookedWhisper
    from hooked_whisper.extraction import Manifest
    from hooked_whisper.probing import extract_activations

    manifest = Manifest.read(args.manifest)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":  # one GPU per process under torchrun / accelerate
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    model = HookedWhisper.from_pretrained(args.model, device=device)
    pooling = int(args.decoder_pooling) if args.decoder_pooling.lstrip("-").isdigit() else args.decoder_pooling
    store = extract_activations(
        model,
        manifest,
        args.hooks,
        pooling=args.pooling,
        decoder_pooling=pooling,
        batch_size=args.batch_size,
        out_dir=args.out,
        shard_size=args.shard_size,
        dtype=getattr(torch, args.dtype),
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{args.out}: {store.n} clips x {len(store.hooks)} hooks; {len(store.failed)} failed to load")
        for clip, reason in store.failed.items():
            print(f"hooked-whisper: {clip}: {reason}", file=sys.stderr)
    return 0


def positive_int(text: str) -> int:
    """An argparse type: a whole number, 1 or more (0 would extract nothing, or loop forever)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def add_decoding_flags(parser: argparse.ArgumentParser, defaults: DecodingOptions) -> None:
    """One flag per ``DecodingOptions`` field meant for the command line, typed and described as
    the field is (a new option reaches the command line from its declaration alone); the
    defaults shown are those of ``defaults``, the options the command starts from."""
    from hooked_whisper.decoding_options import cli_fields

    for f, kind in cli_fields():
        value = getattr(defaults, f.name)
        shown = ", ".join(map(str, value)) if isinstance(value, tuple) else value  # a schedule, tried in turn
        default = "" if value is None else f" (default: {shown})"
        parser.add_argument(
            "--" + f.name.replace("_", "-"), type=kind, choices=f.metadata["choices"], help=f.metadata["help"] + default
        )


MODEL_HELP = (
    "'tiny.en' or 'base' (bundled by the weights extra), a Hugging Face repo id such as "
    "'openai/whisper-small', or a path to a checkpoint (default: %(default)s)"
)


def main(argv: list[str] | None = None) -> None:
    from hooked_whisper.decoding_options import LONG_FORM_OPTIONS

    parser = argparse.ArgumentParser(prog="hooked-whisper", description="Whisper with hooks everywhere")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="transcribe a clip and summarise the activation cache")
    p.add_argument("clip", help="an audio file (its first 30 s are inspected)")
    p.add_argument("--model", default="tiny.en", help=MODEL_HELP)
    p.add_argument("--html", default=None, metavar="PATH", help="also write the clip report, an interactive page")
    p.set_defaults(run=inspect)
    p = sub.add_parser("transcribe", help="transcribe audio files of any length")
    p.add_argument("files", nargs="+")
    p.add_argument("--model", default="tiny.en", help=MODEL_HELP)
    add_decoding_flags(p, LONG_FORM_OPTIONS)
    p.add_argument("--timestamps", action="store_true", help="print segments with their times (always decoded)")
    p.add_argument("--word-timestamps", action="store_true", help="also time each word (alignment heads + DTW)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="files decoded together (default: 8)")
    p.add_argument(
        "--fallback",
        default="loop-aware",
        choices=["loop-aware", "openai"],
        help="loop-aware: a looping attempt moves to the next temperature at once; openai: its exact algorithm",
    )
    p.add_argument("--json", action="store_true", help="print the full result (segments, words, windows) as JSON")
    p.set_defaults(run=transcribe)
    p = sub.add_parser(
        "extract",
        help="pooled activations of a corpus into safetensors shards (resumable; one process per GPU under torchrun)",
    )
    p.add_argument("manifest", help="a file of audio paths, or a TSV with path (and label, group) columns")
    p.add_argument("--model", default="tiny.en", help=MODEL_HELP)
    p.add_argument("--hooks", nargs="+", required=True, help="hook names, e.g. encoder_blocks.3.hook_resid_post")
    p.add_argument("--pooling", default="mean_audio", help="encoder pooling: mean_audio, mean or none")
    p.add_argument("--decoder-pooling", default="prompt_end", help="last, prompt_end, mean, none or a position")
    p.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--shard-size", type=positive_int, default=256, help="clips per shard (a multiple of --batch-size)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    p.set_defaults(run=extract)
    args = parser.parse_args(argv)
    from weights_conversion import CheckpointError

    try:
        code = args.run(args)
    except (OSError, ValueError, TypeError, CheckpointError) as err:  # one line, no traceback
        print(f"hooked-whisper: error: {err}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
