"""HookedQwen2Audio against transformers' Qwen2AudioForConditionalGeneration (eager attention) on
small random models: every hidden state, the audio tower, pooling, projector, attention patterns,
logits, greedy generation, loading a saved folder, and the toolkit on it."""

from __future__ import annotations

import copy
import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch

from hooked_whisper import HookedQwen2Audio, load_audio
from hooked_whisper.config import HookedQwen2AudioConfig
from hooked_whisper.patching import Site, activation_patch, frames
from hooked_whisper.probing import extract_activations
from tests.support import DATA, assert_within_float32_spread
from weights_conversion.qwen2_audio import convert_qwen2_audio_state_dict

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
VOCAB = 320
CONFIGS = {
    # grouped-query attention (4 query heads share 2 key/value heads), audio narrower than text
    "gqa_5s": dict(audio=(64, 2, 2), text=dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=160), seconds=5.0),
    # one key/value head per query head, audio wider than text, a length off the 10 ms grid
    "mha_12s": dict(audio=(48, 1, 3), text=dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                    num_key_value_heads=2, intermediate_size=80), seconds=12.345),
}  # fmt: skip


def tokenizer_json(path) -> int:
    """A word-level tokenizer.json with the chat and audio specials; returns the <|AUDIO|> id."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["system", "user", "assistant", "Audio", "1:", "You", "are", "a", "helpful", "Transcribe", "the", "audio."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(path))
    return tok.token_to_id("<|AUDIO|>")


def build(name: str, tmp_path_factory, spec: dict | None = None) -> SimpleNamespace:
    """The random HF model, our conversion of it, the folder HF saved it to, and a clip."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    spec = spec or CONFIGS[name]
    folder = tmp_path_factory.mktemp(name)
    audio_token = tokenizer_json(folder / "tokenizer.json")
    d, layers, heads = spec["audio"]
    hf_cfg = Qwen2AudioConfig(
        audio_config=dict(
            d_model=d, encoder_layers=layers, encoder_attention_heads=heads, encoder_ffn_dim=2 * d, num_mel_bins=128
        ),
        text_config=dict(vocab_size=VOCAB, **spec["text"]),
        audio_token_index=audio_token,
    )
    torch.manual_seed(0)
    hf = Qwen2AudioForConditionalGeneration(hf_cfg).eval()
    for config in (hf.config, hf.config.audio_config, hf.config.text_config):
        config._attn_implementation = "eager"  # attention weights to compare
    with torch.no_grad():  # random init leaves biases at zero and norms at one: perturb them
        for key, p in hf.named_parameters():
            if key.endswith("bias") or "norm" in key:
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(folder)
    cfg = HookedQwen2AudioConfig.from_hf_config(json.loads((folder / "config.json").read_text()))
    model = HookedQwen2Audio(cfg)
    model.load_state_dict(convert_qwen2_audio_state_dict(hf.state_dict(), cfg, "hf", "hooked"))
    clip = load_audio(DATA / "librivox_0880.wav")[: int(spec["seconds"] * 16000)]
    return SimpleNamespace(hf=hf, model=model.eval(), folder=folder, clip=clip, audio_token=audio_token)


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    return build(request.param, tmp_path_factory)


def hf_inputs(pair, ids):
    from transformers import WhisperFeatureExtractor

    features = WhisperFeatureExtractor(feature_size=128)(
        pair.clip.numpy(), sampling_rate=16000, return_attention_mask=True, padding="max_length", return_tensors="pt"
    )
    return dict(input_ids=ids, input_features=features.input_features, feature_attention_mask=features.attention_mask)


def prompt_ids(pair, n_audio: int) -> torch.Tensor:
    """Text, then the audio placeholders (one per audio position, as the processor writes), then text."""
    return torch.tensor([[1, 5, 7, 3] + [pair.audio_token] * n_audio + [8, 9, 2, 4]])


def test_parity_with_transformers(pair):
    model, hf = pair.model, pair.hf
    features = model.to_mel(pair.clip, sample_rate=16000)
    n_audio = int(features.n_audio_tokens[0])
    assert n_audio == ((int(features.n_frames[0]) - 1) // 2 + 1 - 2) // 2 + 1 < model.cfg.n_audio_tokens
    ids = prompt_ids(pair, n_audio)
    inputs = hf_inputs(pair, ids)
    assert torch.equal(features.mel, inputs["input_features"])
    assert int(features.n_frames[0]) == int(inputs["feature_attention_mask"].sum())

    seen: dict[str, torch.Tensor] = {}
    tower = hf.model.audio_tower
    taps = [(tower, "hook_encoder_out", lambda out: out.last_hidden_state)]
    taps.append((hf.model.multi_modal_projector, "hook_audio_embeds", lambda out: out))
    for l, layer in enumerate(tower.layers):
        taps.append((layer, f"encoder_blocks.{l}.hook_resid_post", lambda out: out))
        taps.append((layer.self_attn, f"encoder_blocks.{l}.attn.hook_pattern", lambda out: out[1]))
    handles = [
        module.register_forward_hook(lambda m, i, out, name=name, get=get: seen.__setitem__(name, get(out)))
        for module, name, get in taps
    ]
    try:
        with torch.no_grad():
            ref = hf(**inputs, output_hidden_states=True, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        logits, cache = model.run_with_cache(pair.clip, ids, sample_rate=16000)
        exact_logits, exact = copy.deepcopy(model).double().run_with_cache(pair.clip, ids, sample_rate=16000)

    diffs: dict[str, float] = {}

    def close(name: str, reference: torch.Tensor, ours=None, exact_value=None) -> None:
        ours = cache[name] if ours is None else ours
        assert ours.shape == reference.shape, f"{name}: {tuple(ours.shape)} vs {tuple(reference.shape)}"
        assert_within_float32_spread(reference, ours, exact[name] if exact_value is None else exact_value, name)
        diffs[name] = float((ours.double() - reference.double()).abs().max() / reference.abs().max().clamp(min=1e-30))

    close("logits", ref.logits, logits, exact_logits)
    for name, value in seen.items():
        close(name, value)
    assert (cache["encoder_blocks.0.attn.hook_pattern"][..., (n_audio + 1) * 2 :] == 0).all()  # padding unread
    n_layers = model.cfg.n_layers
    for l in range(n_layers):
        close(f"blocks.{l}.hook_resid_pre", ref.hidden_states[l])
        close(f"blocks.{l}.attn.hook_pattern", ref.attentions[l])
    close("ln_final.hook_normalized", ref.hidden_states[n_layers])  # HF's last entry is after the norm
    worst = max(diffs, key=diffs.__getitem__)
    print(
        f"\nparity vs transformers: logits {diffs['logits']:.1e}, worst {worst} {diffs[worst]:.1e} (max|diff|/max|ref|)"
    )


def test_greedy_generation_matches_transformers_and_hooks_are_live(pair):
    model, hf = pair.model, pair.hf
    ids = prompt_ids(pair, 1)  # one placeholder: expanded to the clip's count
    full = model.tokens_for(model.to_mel(pair.clip, 16000), ids)
    ours = model.generate(pair.clip, prompt=ids, max_new_tokens=6, sample_rate=16000)
    with torch.no_grad():
        theirs = hf.generate(**hf_inputs(pair, full), max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert ours.tolist() == theirs.tolist()
    calls = []
    hooks = [("blocks.0.hook_resid_post", lambda x, hook: calls.append(x.shape[1]))]
    model.generate(pair.clip, prompt=ids, max_new_tokens=6, fwd_hooks=hooks, sample_rate=16000)
    assert calls == [full.shape[1]] + [1] * 5  # the prompt, then one position per new token
    deaf = model.generate(
        pair.clip, prompt=ids, max_new_tokens=6, sample_rate=16000,
        fwd_hooks=[("hook_audio_embeds", lambda x, hook: torch.zeros_like(x))],
    )  # fmt: skip
    with torch.no_grad():
        zero_audio = model.decode(deaf[:, : full.shape[1]], torch.zeros(1, model.cfg.n_audio_tokens, model.cfg.d_model))
    assert int(zero_audio[0, -1].argmax()) == int(deaf[0, full.shape[1]])


ROPE_SCALINGS = {
    "linear": dict(type="linear", factor=2.5),
    # n_ctx 64 < the prompt's ~136 tokens: the base is raised from the prefill on, and again at each new token
    "dynamic": dict(rope_type="dynamic", factor=3.0),
}


@pytest.mark.parametrize("kind", list(ROPE_SCALINGS))
def test_rope_scaling_matches_transformers(kind, tmp_path_factory):
    """A config's rotary scaling is honoured (in transformers' current ``rope_parameters`` and in
    the older ``rope_scaling`` + ``rope_theta``): logits and greedy tokens match transformers; a
    kind that is not implemented is refused instead of read as the default."""
    text = dict(CONFIGS["gqa_5s"]["text"], max_position_embeddings=64, rope_scaling=ROPE_SCALINGS[kind])
    pair = build(f"rope_{kind}", tmp_path_factory, dict(CONFIGS["gqa_5s"], text=text))
    saved = json.loads((pair.folder / "config.json").read_text())
    assert pair.model.cfg.rope_type == kind and pair.model.cfg.rope_factor == ROPE_SCALINGS[kind]["factor"]
    older = copy.deepcopy(saved)
    rope = older["text_config"].pop("rope_parameters")
    older["text_config"].update(rope_theta=rope.pop("rope_theta"), rope_scaling=rope)
    assert HookedQwen2AudioConfig.from_hf_config(older) == pair.model.cfg

    model, hf = pair.model, pair.hf
    ids = prompt_ids(pair, 1)
    full = model.tokens_for(model.to_mel(pair.clip, 16000), ids)
    assert full.shape[1] > text["max_position_embeddings"]  # past the context the dynamic kind stretches
    with torch.no_grad():
        logits = model(pair.clip, ids, sample_rate=16000)
        exact = copy.deepcopy(model).double()(pair.clip, ids, sample_rate=16000)
        reference = hf(**hf_inputs(pair, full)).logits
    assert_within_float32_spread(reference, logits, exact, f"logits ({kind} rope)")
    unscaled = copy.deepcopy(model)
    unscaled.cfg = dataclasses.replace(model.cfg, rope_type="default", rope_factor=1.0)
    with torch.no_grad():
        ignored = unscaled(pair.clip, ids, sample_rate=16000)
    ours_diff, ignored_diff = float((logits - reference).abs().max()), float((ignored - reference).abs().max())
    print(f"\n{kind} rope vs transformers: logits {ours_diff:.1e}; with the scaling ignored {ignored_diff:.1e}")
    assert ignored_diff > 100 * ours_diff  # the scaling matters here
    ours = model.generate(pair.clip, prompt=ids, max_new_tokens=4, sample_rate=16000)
    with torch.no_grad():
        theirs = hf.generate(**hf_inputs(pair, full), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert ours.tolist() == theirs.tolist()

    for bad, match in [
        (dict(rope_type="yarn", factor=4.0), "rope_type='yarn' is not implemented"),
        (dict(rope_type="linear"), "without a 'factor'"),
        (dict(rope_type="linear", factor=2.0, partial_rotary_factor=0.5), "partial_rotary_factor"),
    ]:
        refused = copy.deepcopy(saved)
        refused["text_config"]["rope_parameters"] = dict(rope_theta=10000.0, **bad)
        with pytest.raises(ValueError, match=match):
            HookedQwen2AudioConfig.from_hf_config(refused)


def test_saved_folder_loads_with_the_same_logits_and_tokenizer(pair):
    loaded = HookedQwen2Audio.from_pretrained(pair.folder)
    with torch.no_grad():
        logits = pair.model(pair.clip, prompt_ids(pair, 1), sample_rate=16000)
        again = loaded(pair.clip, prompt_ids(pair, 1), sample_rate=16000)
    assert torch.equal(logits, again)
    tokens = loaded.to_tokens(loaded.chat_prompt(n_audio_tokens=3))
    assert (tokens == pair.audio_token).sum() == 3 and 0 not in tokens.tolist()  # every word known
    default = loaded(pair.clip, sample_rate=16000)  # the transcription prompt, placeholders expanded
    assert default.shape[1] == tokens.shape[1] - 3 + int(loaded.to_mel(pair.clip, 16000).n_audio_tokens[0])


def test_toolkit_on_the_audio_llm(pair, tmp_path):
    from hooked_whisper.lens import logit_lens

    model = HookedQwen2Audio.from_pretrained(pair.folder)  # with its tokenizer: the default prompt
    other = load_audio(DATA / "goforward.wav")[: len(pair.clip)]
    other = torch.nn.functional.pad(other, (0, len(pair.clip) - len(other)))
    ids = prompt_ids(pair, 1)
    with torch.no_grad():
        logits, cache = model.run_with_cache(pair.clip, ids, sample_rate=16000)
    lens = logit_lens(model, cache, k=2)
    assert lens.labels[-1] == f"block {model.cfg.n_layers - 1}"
    assert torch.equal(lens.final_token, logits.argmax(-1))

    hooks = ["encoder_blocks.0.hook_resid_post", "hook_audio_embeds", "blocks.1.hook_resid_post"]
    store = extract_activations(
        model, [pair.clip], hooks, decoder_pooling="prompt_end", sample_rate=16000, progress=False
    )
    n_audio = int(model.to_mel(pair.clip, 16000).n_audio_tokens[0])
    assert torch.allclose(store["hook_audio_embeds"][0], cache["hook_audio_embeds"][0, :n_audio].mean(0))
    assert store["blocks.1.hook_resid_post"].shape == (1, model.cfg.d_model)

    # A time window on the audio embeddings: 0.5-1.5 s is audio positions 12..37 (25 per second).
    site = Site("hook_audio_embeds", positions=frames(0.5, 1.5))
    full_ids = model.tokens_for(model.to_mel(pair.clip, 16000), ids)
    last = model.cfg.d_vocab - 1

    def metric(out: torch.Tensor) -> torch.Tensor:
        return out[:, -1, last]

    patched = activation_patch(
        model, pair.clip, other, site, metric, tokens=full_ids, sample_rate=16000, progress=False
    )
    with torch.no_grad():
        target = model.encode(pair.clip, sample_rate=16000)
        target[:, 12:38] = model.encode(other, sample_rate=16000)[:, 12:38]
        by_hand = metric(model.decode(full_ids, target))
    assert torch.allclose(patched, by_hand) and not torch.allclose(patched, metric(logits))


def test_bad_inputs_are_refused_with_the_fix(pair):
    model = pair.model
    with pytest.raises(ValueError, match="does not say how many of its frames"):
        model(torch.zeros(1, 128, 3000), prompt_ids(pair, 1))
    with pytest.raises(ValueError, match="3 audio placeholders but the clip gives"):
        model(pair.clip, prompt_ids(pair, 3), sample_rate=16000)
    with pytest.raises(ValueError, match="30 s"):
        model(torch.full((16000 * 31,), 0.01), prompt_ids(pair, 1), sample_rate=16000)
    with pytest.raises(ValueError, match="no tokenizer"):
        model.to_tokens("hello")
    with pytest.raises(ValueError, match="no hook named 'blocks.0.hook_resid_pr'"):
        model.run_with_cache(pair.clip, prompt_ids(pair, 1), names_filter=["blocks.0.hook_resid_pr"], sample_rate=16000)


def test_path_patching_into_the_language_model(pair):
    """Sender: an audio-encoder MLP; receiver: one key/value group of a language-model layer,
    through its keys and values only. Checked against the same change made by hand on
    ``hook_k`` and ``hook_v``."""
    from hooked_whisper.patching import Receiver, cross_attention_receivers, path_patch

    model = pair.model
    other = load_audio(DATA / "goforward.wav")[: len(pair.clip)]
    other = torch.nn.functional.pad(other, (0, len(pair.clip) - len(other)))
    ids = model.tokens_for(model.to_mel(pair.clip, 16000), prompt_ids(pair, 1))
    receivers = cross_attention_receivers(model, via="k")
    assert len(receivers) == model.cfg.n_layers * model.cfg.n_key_value_heads
    layer, group = model.cfg.n_layers - 1, model.cfg.n_key_value_heads - 1
    sender = "encoder_blocks.0.hook_mlp_out"

    def metric(out: torch.Tensor) -> torch.Tensor:
        return out[:, -1].log_softmax(-1)[:, 7]

    kw = dict(tokens=ids, sample_rate=16000, progress=False)
    same = path_patch(model, pair.clip, pair.clip, sender, receivers[:2], metric, **kw)
    with torch.no_grad():
        baseline = metric(model(pair.clip, ids, sample_rate=16000))
    assert torch.allclose(same, baseline.expand(2))
    ours = path_patch(model, pair.clip, other, sender, [Receiver(layer, group, "kv")], metric, **kw)

    with torch.no_grad():  # by hand: the changed audio embeddings, added at layer `layer`'s key input
        _, base_cache = model.run_with_cache(pair.clip, ids, sample_rate=16000)
        _, source_cache = model.run_with_cache(other, ids, sample_rate=16000)
        last = base_cache[f"encoder_blocks.{model.cfg.audio.n_encoder_layers - 1}.hook_resid_post"]
        changed = model.finish_encoder(last + source_cache[sender] - base_cache[sender])
        slots = (ids[0] == model.cfg.audio_token_id).nonzero().flatten()
        resid = base_cache[f"blocks.{layer}.hook_resid_pre"].clone()
        resid[0, slots] += (changed - base_cache["hook_audio_embeds"])[0, : len(slots)]
        attn, x = model.blocks[layer].attn, model.blocks[layer].ln1(resid)
        new = {"k": x @ attn._W_K[group] + attn._b_K[group], "v": x @ attn._W_V[group] + attn._b_V[group]}

        def replace_group(x, hook):
            x = x.clone()
            x[:, :, group] = new[hook.name[-1]]
            return x

        hooks = [(f"blocks.{layer}.attn.hook_{part}", replace_group) for part in "kv"]
        by_hand = metric(model.run_with_hooks(pair.clip, ids, fwd_hooks=hooks, sample_rate=16000))
    exact = path_patch(
        copy.deepcopy(model).double(), pair.clip, other, sender, [Receiver(layer, group, "kv")], metric, **kw
    )
    assert_within_float32_spread(by_hand, ours, exact, "path patch vs by hand")
    assert (ours - baseline).abs() > 100 * (ours.double() - exact).abs()  # the patch did something
    with pytest.raises(ValueError, match="audio-side sender"):
        path_patch(model, pair.clip, other, "blocks.0.hook_mlp_out", receivers[-1:], metric, **kw)
