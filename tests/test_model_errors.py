"""The library on hostile input: a config whose numbers cannot make a working model, and ids that are no token, are
refused with a message naming the field or the tensor, never turned into NaN logits or an infinite loss."""

import math

import pytest
import torch

from modeling_gpt import GPTConfig, GPTForCausalLM


@pytest.mark.parametrize("field", ["layer_norm_epsilon", "rope_theta", "initializer_range", "dropout"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "1e-5", True])
def test_every_float_field_must_be_a_finite_number(field, value):
    preset = "gpt2.5" if field == "rope_theta" else "tiny"
    with pytest.raises(ValueError, match=f"{field}={value!r} must be a finite number"):
        GPTConfig.from_preset(preset, **{field: value})


def test_a_negative_initializer_range_is_refused():
    with pytest.raises(ValueError, match=r"initializer_range=-0.02 must be >= 0"):
        GPTConfig.from_preset("tiny", initializer_range=-0.02)


@pytest.fixture(params=["tiny", "gpt2.5"])
def model(request):
    torch.manual_seed(0)
    config = GPTConfig.from_preset(request.param, vocab_size=100, n_layer=2, n_embd=64, n_head=4, n_inner=128,
                                   n_positions=64, bos_token_id=0, eos_token_id=0)
    assert config.padded_vocab_size == 128
    return GPTForCausalLM(config)


@pytest.mark.parametrize("bad_id", [100, 127, 128, 50303])
def test_input_ids_in_the_padded_rows_or_past_them_are_refused(model, bad_id):
    ids = torch.tensor([[1, 2, bad_id]])
    with pytest.raises(RuntimeError, match=r"input_ids holds a token id >= vocab_size=100: ids must be in \[0, 100\)"):
        model(ids)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("bad_id", [100, 127])
def test_labels_in_the_padded_rows_are_refused_not_an_infinite_loss(model, fused, bad_id):
    model.train()
    ids = torch.tensor([[1, 2, 3, 4]])
    labels = torch.tensor([[1, bad_id, -100, 4]])
    with pytest.raises(RuntimeError, match=r"labels holds a token id >= vocab_size=100"):
        model(ids, labels=labels, skip_logits=fused)


def test_the_last_real_id_and_ignored_labels_still_train(model):
    model.train()
    out = model(torch.tensor([[1, 2, 99]]), labels=torch.tensor([[1, -100, 99]]))
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_the_id_check_compiles_into_the_graph(model):
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    assert torch.isfinite(compiled(torch.tensor([[1, 2, 99]])).logits).all()
    with pytest.raises(RuntimeError, match="input_ids holds a token id >= vocab_size=100"):
        compiled(torch.tensor([[1, 2, 110]]))
