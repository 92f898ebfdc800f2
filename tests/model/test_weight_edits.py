"""A weight edit, however it is made, is seen by every path: no-grad forwards, generate and transcribe."""

from __future__ import annotations

import copy

import pytest
import torch

from hooked_whisper import HookedWhisper
from tests.support import DATA

CLIP = DATA / "librivox_0880.wav"


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
