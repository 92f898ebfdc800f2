"""python -m weights_conversion SRC OUT_DIR: write any supported checkpoint as a Hugging Face folder."""

from __future__ import annotations

import argparse

import torch

from weights_conversion import load_checkpoint, save_hf_folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m weights_conversion", description=__doc__)
    parser.add_argument(
        "src", help="bundled name (tiny.en, base), Hub repo id, HF folder, openai .pt or CTranslate2 folder"
    )
    parser.add_argument(
        "out_dir", help="folder to write model.safetensors, config.json, generation_config.json, tokenizer.json"
    )
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.src)
    out = save_hf_folder(ckpt, args.out_dir, dtype=getattr(torch, args.dtype))
    cfg = ckpt.config
    print(
        f"wrote {out}: {cfg.d_model} wide, {cfg.n_encoder_layers}+{cfg.n_decoder_layers} layers, "
        f"{cfg.n_mels} mels, vocabulary {cfg.d_vocab}"
    )


if __name__ == "__main__":
    main()
