"""What scaled_dot_product_attention receives, eagerly and under torch.compile: no mask where none is needed.

transformers' create_causal_mask never skips the mask when traced (upstream issue 48925), so a compiled, unpadded
forward would hand sdpa a (B, 1, T, T) mask with is_causal=False, and flash attention could not run. A dynamo
backend reads the captured FX graph to see the arguments of every sdpa call; a patched sdpa records them eagerly.
"""

import pytest
import torch
import torch.nn.functional as F

from modeling_gpt import GPTConfig, GPTForCausalLM
from modeling_gpt.modeling_gpt import CACHE

VOCAB = 1000
VARIANTS = ["tiny", "gpt2.5"]


def tiny(preset):
    torch.manual_seed(0)
    config = GPTConfig.from_preset(preset, vocab_size=VOCAB, n_layer=2, n_embd=64, n_head=4, n_positions=128,
                                   bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    return GPTForCausalLM(config)


def batch(B=2, T=12):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(1))


def sdpa_args_compiled(model, fullgraph, **inputs):
    """(attn_mask is None, is_causal) of every sdpa call in the graphs dynamo captures, and the compiled output."""
    calls = []

    def backend(gm, example_inputs):
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is F.scaled_dot_product_attention:
                calls.append((node.kwargs.get("attn_mask") is None, node.kwargs.get("is_causal", False)))
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(model, backend=backend, fullgraph=fullgraph)(**inputs)
    torch._dynamo.reset()
    return calls, out


def sdpa_args_eager(model, monkeypatch, **inputs):
    calls = []

    def recording_sdpa(*args, attn_mask=None, is_causal=False, **kwargs):
        calls.append((attn_mask is None, is_causal))
        return sdpa(*args, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    sdpa = F.scaled_dot_product_attention
    with monkeypatch.context() as patch:
        patch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
        out = model(**inputs)
    return calls, out


@pytest.mark.slow
@pytest.mark.parametrize("fullgraph", [False, True])
@pytest.mark.parametrize("preset", VARIANTS)
def test_compiled_unpadded_training_forward_hands_sdpa_no_mask(preset, fullgraph):
    model = tiny(preset).train()
    x = batch()
    calls, compiled = sdpa_args_compiled(model, fullgraph, input_ids=x, labels=x)
    assert calls == [(True, True)] * model.config.n_layer
    torch.testing.assert_close(compiled.loss, model(input_ids=x, labels=x).loss, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("preset", VARIANTS)
def test_compiled_scoring_with_an_empty_cache_hands_sdpa_no_mask(preset):
    model = tiny(preset).eval()  # eval: the forward makes an empty DynamicCache (the first prefill)
    x = batch()
    with torch.no_grad():
        calls, compiled = sdpa_args_compiled(model, True, input_ids=x)
        eager = model(input_ids=x)
    assert calls == [(True, True)] * model.config.n_layer
    torch.testing.assert_close(compiled.logits, eager.logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("preset", VARIANTS)
def test_compiled_padded_and_packed_batches_keep_their_mask(preset):
    model = tiny(preset).eval()
    x = batch()
    padded = torch.ones_like(x)
    padded[0, :3] = 0
    packed = torch.cat([torch.arange(5), torch.arange(7)])[None].expand(2, -1)
    for inputs in (dict(attention_mask=padded), dict(position_ids=packed)):
        with torch.no_grad():
            calls, compiled = sdpa_args_compiled(model, False, input_ids=x, use_cache=False, **inputs)
            eager = model(input_ids=x, use_cache=False, **inputs)
        assert calls == [(False, False)] * model.config.n_layer
        torch.testing.assert_close(compiled.logits, eager.logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", VARIANTS)
def test_eager_unpadded_forward_hands_sdpa_no_mask(preset, monkeypatch):
    model = tiny(preset).train()
    x = batch()
    for inputs in (dict(), dict(attention_mask=torch.ones_like(x))):
        calls, _ = sdpa_args_eager(model, monkeypatch, input_ids=x, labels=x, **inputs)
        assert calls == [(True, True)] * model.config.n_layer


@pytest.mark.parametrize("preset", VARIANTS)
def test_eager_padding_packing_and_cached_decoding_keep_their_mask(preset, monkeypatch):
    model = tiny(preset).eval()
    x = batch()
    padded = torch.ones_like(x)
    padded[0, :3] = 0
    packed = torch.cat([torch.arange(5), torch.arange(7)])[None].expand(2, -1)
    with torch.no_grad():
        for inputs in (dict(attention_mask=padded), dict(position_ids=packed)):
            calls, _ = sdpa_args_eager(model, monkeypatch, input_ids=x, use_cache=False, **inputs)
            assert calls == [(False, False)] * model.config.n_layer
        cache = getattr(model(input_ids=x[:, :-1], attention_mask=padded[:, :-1]), CACHE)
        calls, _ = sdpa_args_eager(model, monkeypatch, input_ids=x[:, -1:], attention_mask=padded, **{CACHE: cache})
    assert calls == [(False, False)] * model.config.n_layer
