"""The hallucination-probe data builder on three items: real clips from tests/data, a synthetic
noise file, a small random model (no checkpoint, no Debian data)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import soundfile
import torch

sys.path.insert(0, str(Path(__file__).parent.parent.parent))
from benchmarks.paper import hallucination_speech_data as data  # noqa: E402
from tests.support import assert_within_float32_spread, random_whisper  # noqa: E402

TESTS_DATA = Path(__file__).parent.parent / "data"


def test_core_sounds_parsing_keeps_words_and_drops_descriptions():
    text = "; header\n\nbeep: [a simple beep tone]\ndigits/1: One.\nagent-pass: Please enter [pause] 1 now.\nno colon\n"
    assert data.parse_core_sounds(text) == {"digits/1": "One.", "agent-pass": "Please enter 1 now."}


def test_insertions_and_numbers():
    assert data.spoken_numbers("press 1 or 42") == "press one or forty two"
    assert data.insertions("press one", "please press one now") == 2
    assert data.insertions("press one now", "press now") == 0  # a deletion, not an insertion


def test_builder_writes_resumable_items_with_eot_activations(tmp_path):
    noise = tmp_path / "noise"
    noise.mkdir()
    soundfile.write(
        noise / "hum.wav", 0.1 * torch.randn(12 * 16000, generator=torch.Generator().manual_seed(0)).numpy(), 16000
    )
    prompts = data.folder_prompts(TESTS_DATA)[:1]  # one prompt, three versions: one group
    items = data.degraded_items(prompts, data.noise_sources([noise]), codec=None)
    assert [it.condition for it in items] == ["clean", "noise", "telephone"]
    model = random_whisper(d_model=64, n_heads=2, d_head=32, n_encoder_layers=1, n_decoder_layers=2, d_vocab=51864)
    out = tmp_path / "out"
    assert data.build(model, items, out, batch_size=3, max_new_tokens=4, progress=False) == 3
    assert data.build(model, items, out, batch_size=3, max_new_tokens=4, progress=False) == 0  # resumed: nothing new
    rows, acts = data.load(out)
    assert len(rows) == 3 and {r["group"] for r in rows} == {prompts[0].id}
    assert sorted(acts) == ["enc.0", "eot.0", "eot.1", "last.0", "last.1"]
    assert all(a.shape == (3, 64) for a in acts.values())
    # The end-of-text row is the decoder's residual stream at end-of-text after the transcript,
    # recomputed alone (no batch padding), within float32's measured error against float64.
    row, hook = rows[1], model.hook_name("decoder", 1, "hook_resid_post")
    tokens = torch.tensor([model.prompt_tokens() + row["tokens"] + [model.special.eot]])

    def alone(m):
        caught = {}
        with torch.no_grad(), m.hooks(fwd_hooks=[(hook, lambda x, hook: caught.setdefault("x", x))]):
            m.decode(tokens, m.encode(m.to_mel([items[1].audio], sample_rate=16000).to(m.dtype)))
        return caught["x"][0, -1]

    exact = alone(copy.deepcopy(model).double())
    assert_within_float32_spread(acts["eot.1"][1], alone(model), exact, "eot.1")
    assert not torch.allclose(acts["last.1"][1], exact.float())  # the position before is another row
    json.dumps(rows)  # every field serialisable
