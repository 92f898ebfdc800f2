"""No silent wrong answers: weight edits reach every code path, audio is read as the user meant
(channels, sample rates) or refused, time windows select the same seconds on every hook,
threads never share hooks, and checkpoints load as their source decodes or not at all."""

from __future__ import annotations

import copy
import json
import shutil
import threading

import numpy as np
import pytest
import soundfile
import torch

from hooked_whisper import HookedWhisper, HookedWhisperConfig, load_audio
from hooked_whisper.decoding.timing import _median_filter
from hooked_whisper.patching import Site, frames, patch_hooks
from hooked_whisper.patching.sites import resolve
from tests.conftest import DATA

CLIP = DATA / "librivox_0880.wav"


class NotATensor:
    """Pickled into a checkpoint, it makes the file more than tensors."""


def fresh_copy(model: HookedWhisper) -> HookedWhisper:
    """A newly built model given ``model``'s current weights through load_state_dict."""
    other = HookedWhisper(model.cfg, model.tokenizer, model.generation_config)
    other.load_state_dict({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()})
    return other.eval()


def zero_query_data(m):
    m.decoder_blocks[1].attn.W_Q.data.zero_()


def replace_embedding_data(m):
    m.embed.W_E.data = m.embed.W_E.data * 0.5  # a new tensor, in the ordinary (row-major) layout


def copy_under_no_grad(m):
    with torch.no_grad():
        m.decoder_blocks[0].cross_attn.W_V.copy_(torch.zeros_like(m.decoder_blocks[0].cross_attn.W_V))


def new_parameter(m):
    W = m.decoder_blocks[2].attn.W_K
    m.decoder_blocks[2].attn.W_K = torch.nn.Parameter(W.detach().clone().contiguous() * 3)


def through_load_state_dict(m):
    sd = m.state_dict()
    sd["decoder_blocks.3.attn.W_V"] = sd["decoder_blocks.3.attn.W_V"] * -1
    m.load_state_dict(sd)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> HookedWhisper:
    """A small random Whisper (four decoder layers, the real multilingual vocabulary) loaded
    from a Hugging Face folder as a real checkpoint is, so its parameters arrive in the layouts
    loading gives them: every fast path of tiny.en's, in a fraction of its time."""
    from weights_conversion import save_hf_folder

    torch.manual_seed(0)
    cfg = HookedWhisperConfig(d_model=64, n_heads=2, d_head=32, n_encoder_layers=1, n_decoder_layers=4)
    return HookedWhisper.from_pretrained(save_hf_folder(HookedWhisper(cfg), tmp_path_factory.mktemp("small")))


def assert_edit_reaches_every_path(model: HookedWhisper, edit) -> None:
    """``edit`` (in place on ``model``) changes what no-grad forwards, ``generate`` and
    ``transcribe`` compute, exactly as in a newly built model given the edited weights."""
    tokens = model.generate(CLIP, max_new_tokens=10)  # warm every fast path before the edit
    with torch.no_grad():
        before = model(CLIP, tokens)
    edit(model)
    reference = fresh_copy(model)
    with torch.no_grad():
        after, expected = model(CLIP, tokens), reference(CLIP, tokens)
    assert not torch.allclose(after, before), "the edit changed nothing: the test would prove nothing"
    assert torch.equal(after, expected)
    assert torch.equal(model.generate(CLIP, max_new_tokens=10), reference.generate(CLIP, max_new_tokens=10))
    lean = {"temperature": 0.0, "max_new_tokens": 10}
    assert model.transcribe(CLIP, **lean).tokens == reference.transcribe(CLIP, **lean).tokens


@pytest.mark.parametrize(
    "edit", [zero_query_data, replace_embedding_data, copy_under_no_grad, new_parameter, through_load_state_dict]
)
def test_weight_edits_reach_every_path(small, edit):
    assert_edit_reaches_every_path(copy.deepcopy(small), edit)


def test_weight_edit_reaches_every_path_of_a_real_checkpoint(tiny_en):
    assert_edit_reaches_every_path(copy.deepcopy(tiny_en), zero_query_data)


def test_parameters_are_the_only_copy_of_the_weights(tiny_en):
    """The fast kernels read views of the parameters: nothing else holds weight-sized tensors."""
    from hooked_whisper.components.attention import heads_side_by_side

    attn, mlp = tiny_en.decoder_blocks[0].attn, tiny_en.decoder_blocks[0].mlp
    # nn.Linear's [out, in] memory order (the one half-precision CPU kernels read fast)
    assert attn.W_Q.shape == (6, 384, 64) and attn.W_Q.transpose(1, 2).is_contiguous()
    assert heads_side_by_side(attn.W_Q).data_ptr() == attn.W_Q.data_ptr()
    assert attn.W_O.shape == (6, 64, 384) and attn.W_O.flatten(0, 1).T.is_contiguous()
    assert mlp.W_in.T.is_contiguous() and mlp.W_out.T.is_contiguous()
    assert tiny_en.W_U.is_contiguous() and tiny_en.W_U.data_ptr() == tiny_en.W_E.data_ptr()
    assert not hasattr(__import__("hooked_whisper.components.attention").components.attention, "_DERIVED")


def test_stereo_and_other_rates(tiny_en, tmp_path):
    mono = load_audio(CLIP)
    text = tiny_en.transcribe(CLIP).text
    stereo = torch.stack([mono, mono], dim=1).numpy()  # [samples, channels], as soundfile.read returns
    assert tiny_en.transcribe(stereo, sample_rate=16000).text == text
    with pytest.raises(ValueError, match=r"shape \(2, \d+\) could be 2 clips or one clip with 2 channels"):
        tiny_en.run_with_cache(stereo.T, sample_rate=16000)
    import torchaudio.functional

    fast = torchaudio.functional.resample(mono, 16000, 44100)
    same = load_audio(fast, 44100)  # what every method must compute from the 44.1 kHz array
    assert torch.equal(tiny_en.to_mel(fast, sample_rate=44100), tiny_en.to_mel(same, sample_rate=16000))
    assert torch.equal(tiny_en.generate(fast, sample_rate=44100), tiny_en.generate(same, sample_rate=16000))
    assert torch.equal(tiny_en.encode(fast, sample_rate=44100), tiny_en.encode(same, sample_rate=16000))
    tokens = tiny_en.generate(same, sample_rate=16000)
    with torch.no_grad():
        assert torch.equal(tiny_en(fast, tokens, sample_rate=44100), tiny_en(same, tokens, sample_rate=16000))
        logits, cache = tiny_en.run_with_cache(fast, tokens, sample_rate=44100, names_filter=["hook_mel"])
    assert torch.equal(cache["hook_mel"], tiny_en.to_mel(same, sample_rate=16000))
    assert tiny_en.transcribe(fast, sample_rate=44100).text == tiny_en.transcribe(same, sample_rate=16000).text
    path = tmp_path / "clip44k.wav"
    soundfile.write(path, fast.numpy(), 44100)
    with pytest.raises(ValueError, match="says its sample rate is 44100 Hz but sample_rate=8000"):
        tiny_en.transcribe(path, sample_rate=8000)


def test_time_windows_select_the_same_seconds_on_every_hook(tiny_en):
    mel = resolve(tiny_en, Site("hook_mel", positions=frames(0.5, 1.5))).positions
    conv1 = resolve(tiny_en, Site("encoder_embed.hook_conv1", positions=frames(0.5, 1.5))).positions
    encoder = resolve(tiny_en, Site("encoder_blocks.0.hook_resid_post", positions=frames(0.5, 1.5))).positions
    cross_k = resolve(tiny_en, Site("decoder_blocks.0.cross_attn.hook_k", positions=frames(0.5, 1.5))).positions
    assert (mel[0], mel[-1] + 1) == (conv1[0], conv1[-1] + 1) == (50, 150)  # 100 mel frames per second
    assert (encoder[0], encoder[-1] + 1) == (cross_k[0], cross_k[-1] + 1) == (25, 75)  # 50 audio positions per second
    # Zeroing 0.5-1.5 s of the mel changes the encoder's input exactly there.
    hooks = patch_hooks(tiny_en, [Site("hook_mel", positions=frames(0.5, 1.5))], [0.0])
    with torch.no_grad():
        _, cache = tiny_en.run_with_cache(CLIP, [50257], names_filter=["hook_mel"])
        with tiny_en.hooks(fwd_hooks=hooks):
            _, patched = tiny_en.run_with_cache(CLIP, [50257], names_filter=["hook_mel"])
    changed = (patched["hook_mel"] != cache["hook_mel"]).any(dim=1)[0].nonzero().flatten()
    assert changed.min() >= 50 and changed.max() < 150
    with pytest.raises(ValueError, match="decoder tokens"):
        resolve(tiny_en, Site("decoder_blocks.0.hook_resid_post", positions=frames(0.5, 1.5)))


def test_two_threads_never_share_hooks(small):
    """One thread ablates cross-attention (and caches), the other runs clean: each gets what it
    would get alone, however their calls interleave."""
    model = small
    deaf = [(f"decoder_blocks.{l}.hook_cross_attn_out", lambda x, hook: torch.zeros_like(x)) for l in range(4)]
    alone_clean = model.generate(CLIP, max_new_tokens=20)
    alone_deaf = model.generate(CLIP, fwd_hooks=deaf, max_new_tokens=20)
    assert not torch.equal(alone_clean, alone_deaf), (
        "the ablation must change the tokens for the test to prove anything"
    )
    _, alone_cache = model.run_with_cache(CLIP, alone_clean[:, :-1])
    results: dict[str, list] = {"clean": [], "deaf": [], "cache": []}

    def clean_runs():
        for _ in range(10):
            results["clean"].append(model.generate(CLIP, max_new_tokens=20))

    def deaf_runs():
        for _ in range(10):
            results["deaf"].append(model.generate(CLIP, fwd_hooks=deaf, max_new_tokens=20))
            results["cache"].append(model.run_with_cache(CLIP, alone_clean[:, :-1])[1])

    threads = [threading.Thread(target=clean_runs), threading.Thread(target=deaf_runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results["clean"]) == len(results["deaf"]) == 10
    assert all(torch.equal(r, alone_clean) for r in results["clean"])
    assert all(torch.equal(r, alone_deaf) for r in results["deaf"])
    for cache in results["cache"]:
        assert sorted(cache.keys()) == sorted(alone_cache.keys())
        assert torch.equal(cache["hook_tokens"], alone_cache["hook_tokens"])
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())


def test_openai_checkpoint_alone_decodes_like_the_full_folder(tiny_en, tmp_path):
    from weights_conversion import save_openai_checkpoint

    path = save_openai_checkpoint(tiny_en, tmp_path / "tiny.en.pt")  # no tokenizer or generation config beside it
    alone = HookedWhisper.from_pretrained(path)
    assert alone.generation_config.suppress_tokens == tiny_en.generation_config.suppress_tokens
    assert alone.generation_config.begin_suppress_tokens == tiny_en.generation_config.begin_suppress_tokens
    text = alone.transcribe(CLIP).text
    assert text == tiny_en.transcribe(CLIP).text and len(text.split()) > 4


def test_loading_errors_name_the_file(tiny_en, hf_export, tmp_path):
    from weights_conversion import CheckpointError

    good = hf_export(tiny_en, "tiny.en")

    def broken(name: str, write) -> str:
        """A copy of the export with one file broken by ``write``. The weights are linked, not
        copied (a case that breaks them replaces the link), and each copy is removed once read,
        so the test needs about one checkpoint's worth of disk at a time."""
        folder = tmp_path / name
        folder.mkdir()
        for f in good.iterdir():
            if f.name == "model.safetensors":
                (folder / f.name).symlink_to(f)
            else:
                (folder / f.name).write_bytes(f.read_bytes())
        write(folder)
        try:
            with pytest.raises((CheckpointError, ValueError)) as err:
                HookedWhisper.from_pretrained(folder)
        finally:
            shutil.rmtree(folder)
        return str(err.value)

    def replace_weights(folder, data: bytes) -> None:  # never write through the link into the export
        (folder / "model.safetensors").unlink()
        (folder / "model.safetensors").write_bytes(data)

    assert "config.json as JSON" in broken("config", lambda f: (f / "config.json").write_text("{oops"))
    assert "generation_config.json as JSON" in broken("gen", lambda f: (f / "generation_config.json").write_text("[1,"))

    def without_d_model(folder):
        config = json.loads((folder / "config.json").read_text())
        del config["d_model"]
        (folder / "config.json").write_text(json.dumps(config))

    assert "config.json has no 'd_model'" in broken("no_d_model", without_d_model)

    def relu(folder):
        config = json.loads((folder / "config.json").read_text())
        config["activation_function"] = "relu"
        (folder / "config.json").write_text(json.dumps(config))

    assert "activation_function='relu'" in broken("relu", relu)

    def truncate(folder):
        data = (folder / "model.safetensors").read_bytes()
        replace_weights(folder, data[: len(data) // 2])

    message = broken("truncated", truncate)
    assert "model.safetensors" in message and "truncated" in message
    assert "tokenizer.json as a tokenizer" in broken("tok", lambda f: (f / "tokenizer.json").write_text("{}"))

    def pickled(folder):
        (folder / "model.safetensors").unlink()
        torch.save({"weights": torch.zeros(1), "something": NotATensor()}, folder / "pytorch_model.bin")

    assert "pytorch_model.bin" in broken("pickle", pickled)

    def nan(folder):
        from safetensors.torch import load_file, save_file

        sd = load_file(str(folder / "model.safetensors"))
        sd["model.decoder.layers.0.fc1.weight"][0, 0] = float("nan")
        (folder / "model.safetensors").unlink()
        save_file(sd, str(folder / "model.safetensors"))

    assert "NaN or infinite" in broken("nan", nan)


def test_bad_hook_returns_tokens_and_options_are_clear_errors(tiny_en):
    with pytest.raises(ValueError, match=r"the hook on encoder_blocks.1.hook_resid_post returned shape \(1, 10, 384\)"):
        tiny_en.run_with_hooks(
            CLIP, [50257], fwd_hooks=[("encoder_blocks.1.hook_resid_post", lambda x, hook: x[:, :10])]
        )
    with pytest.raises(ValueError, match="returned shape .* torch.float64"):
        tiny_en.run_with_hooks(CLIP, [50257], fwd_hooks=[("hook_embed", lambda x, hook: x.double())])
    assert not any(hp.has_hooks() for hp in tiny_en.hook_dict.values())
    with pytest.raises(ValueError, match="tokens are empty"):
        tiny_en(CLIP, [])
    with pytest.raises(ValueError, match=r"tokens are \[pos\] or \[batch, pos\]"):
        tiny_en(CLIP, torch.zeros(1, 1, 3, dtype=torch.long))
    for bad in (lambda: tiny_en.to_string([10**6]), lambda: tiny_en.to_str_tokens([10**6])):
        with pytest.raises(ValueError, match=r"token ids must lie in \[0, 51864\)"):
            bad()
    for temperature in ((0.0, -0.2), float("nan"), ()):
        with pytest.raises(ValueError, match="temperature must be"):
            tiny_en.transcribe(CLIP, temperature=temperature)


def test_unknown_language_is_reported_before_the_encoder_runs(small):
    calls = []
    assert "de" in small.special.languages  # a multilingual vocabulary
    with small.hooks(fwd_hooks=[("hook_mel", lambda x, hook: calls.append(1))]):
        with pytest.raises(ValueError, match="unknown language 'xx'"):
            small.transcribe(CLIP, language="xx")
    assert calls == []


def test_waveform_for_a_model_with_a_shorter_audio_context():
    model = HookedWhisper(
        HookedWhisperConfig(d_model=64, n_heads=1, n_encoder_layers=1, n_decoder_layers=1, n_audio_ctx=100)
    )
    with pytest.raises(ValueError, match=r"reads 200 mel frames.*pass a log-mel \[batch, 80, 200\]"):
        model.encode(np.zeros(16000, dtype=np.float32), sample_rate=16000)
    assert model.encode(torch.zeros(1, 80, 200)).shape == (1, 100, 64)


def test_median_filter_any_rank():
    x = torch.randn(2, 3, 4, 50, generator=torch.Generator().manual_seed(0))
    out = _median_filter(x, 7)
    padded = torch.nn.functional.pad(x.reshape(-1, 1, 50), (3, 3), mode="reflect").reshape(2, 3, 4, 56)
    expected = torch.stack([padded[..., i : i + 7].median(-1).values for i in range(50)], dim=-1)
    assert out.shape == x.shape and torch.equal(out, expected)
    assert torch.equal(_median_filter(x[0, 0, 0], 7), expected[0, 0, 0])
