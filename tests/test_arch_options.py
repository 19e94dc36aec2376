"""Architecture options (qk_norm, untied head, zero-initialised residual projections): each against the
transformers class it exports to (tiny models, CPU)."""

import pytest
import torch
from transformers import GPT2LMHeadModel, LlamaForCausalLM, Qwen3ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention

from modeling_gpt import GPTConfig, GPTForCausalLM
from modeling_gpt.convert import from_llama, from_qwen3

VOCAB = 1000  # pads to 1024


def tiny(preset="tiny", **overrides):
    torch.manual_seed(0)
    config = GPTConfig.from_preset(preset, vocab_size=VOCAB, n_layer=2, n_embd=64, n_head=4, n_positions=128,
                                   bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, **overrides)
    model = GPTForCausalLM(config).eval()
    with torch.no_grad():  # norm gains away from 1 so that a norm applied in the wrong place shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    model.set_attn_implementation("eager")
    return model


def batch(B=3, T=20, seed=1):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def assert_same_function(ours, native):
    native.set_attn_implementation("eager")
    x = batch()
    with torch.no_grad():
        a, b = native(x, labels=x), ours(x, labels=x)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.loss, a.loss, atol=1e-6, rtol=1e-6)
    # cached decoding, step by step on the logits (a random tiny model repeats tokens: tokens alone prove little)
    prompt = x[:, :5]
    kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False, pad_token_id=VOCAB - 1,
                  output_logits=True, return_dict_in_generate=True)
    ga, gb = native.generate(prompt, **kwargs), ours.generate(prompt, **kwargs)
    assert torch.equal(gb.sequences, ga.sequences)
    torch.testing.assert_close(torch.stack(gb.logits), torch.stack(ga.logits), atol=1e-5, rtol=1e-5)


def assert_round_trip(ours, back):
    for k, v in ours.state_dict().items():
        w = back.state_dict()[k]
        if "wte" in k or "lm_head" in k:  # the padded rows are not carried by the native model
            v, w = v[:VOCAB], w[:VOCAB]
        assert torch.equal(w, v), k


def test_qk_norm_matches_qwen3():
    ours = tiny("gpt2.5", n_inner=128, qk_norm=True)
    native = ours.to_hf_native()
    assert type(native) is Qwen3ForCausalLM
    assert native.config.sliding_window is None and native.config.tie_word_embeddings
    assert_same_function(ours, native)
    back = from_qwen3(native)
    assert back.config.qk_norm
    assert_round_trip(ours, back)


def test_qk_norm_is_over_head_dim_before_rope():
    """One attention layer against Qwen3Attention with the same weights, RoPE at positions far from 0."""
    ours = tiny("gpt2.5", n_inner=128, qk_norm=True)
    native = ours.to_hf_native()
    native.set_attn_implementation("eager")
    attn_ours, attn_native = ours.transformer.h[0].attn, native.model.layers[0].self_attn
    assert isinstance(attn_native, Qwen3Attention)
    assert attn_ours.q_norm.weight.shape == (ours.config.head_dim,)
    h = torch.randn(2, 7, 64)
    pos = torch.arange(100, 107)[None].expand(2, -1)
    with torch.no_grad():
        a, _ = attn_native(h, position_embeddings=native.model.rotary_emb(h, pos), attention_mask=None)
        b, _ = attn_ours(h, position_embeddings=ours.transformer.rotary_emb(h, pos), attention_mask=None)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("preset", "native_class"), [("tiny", GPT2LMHeadModel), ("gpt2.5", LlamaForCausalLM)])
def test_untied_head_matches_native(preset, native_class):
    ours = tiny(preset, tie_word_embeddings=False)
    assert ours.lm_head.weight.data_ptr() != ours.transformer.wte.weight.data_ptr()
    with torch.no_grad():
        ours.lm_head.weight.mul_(-1.5)  # a head that is not the embedding
    native = ours.to_hf_native()
    assert type(native) is native_class and not native.config.tie_word_embeddings
    assert native.lm_head.weight.data_ptr() != native.get_input_embeddings().weight.data_ptr()
    assert_same_function(ours, native)
    if preset == "gpt2.5":
        assert_round_trip(ours, from_llama(native))


def test_untied_head_with_qk_norm_matches_qwen3(tmp_path):
    ours = tiny("gpt2.5", n_inner=128, qk_norm=True, tie_word_embeddings=False)
    native = ours.to_hf_native()
    native.save_pretrained(tmp_path)
    loaded = Qwen3ForCausalLM.from_pretrained(tmp_path)
    assert not loaded.config.tie_word_embeddings
    assert_same_function(ours, loaded)
    assert_round_trip(ours, from_qwen3(tmp_path))


@pytest.mark.parametrize("preset", ["tiny", "gpt2.5"])
def test_zero_init_residual(preset):
    torch.manual_seed(0)
    model = GPTForCausalLM(GPTConfig.from_preset(preset, vocab_size=VOCAB, n_layer=4, n_embd=64, n_head=4, zero_init_residual=True,
                                                         bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1))
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert torch.count_nonzero(p) == 0, name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight")):
            assert abs(p.std().item() - 0.02) < 0.002, name
    # every block starts as the identity: the residual stream is the embedding
    x = batch()
    with torch.no_grad():
        hidden = model.transformer(x, output_hidden_states=True).last_hidden_state
        expected = model.transformer.ln_f(model.transformer.wte(x) + (model.transformer.wpe.weight[:20] if preset == "tiny" else 0))
    torch.testing.assert_close(hidden, expected)
    # init only: the exported model is the same function
    native = model.eval().to_hf_native()
    with torch.no_grad():
        torch.testing.assert_close(native(x).logits, model(x).logits, atol=1e-5, rtol=1e-5)


def test_qk_norm_without_native_twin_is_refused():
    with pytest.raises(ValueError, match="qk_norm exports only with the modern variant"):
        tiny(qk_norm=True).to_hf_native()
    with pytest.raises(ValueError, match="qk_norm='yes' must be true or false"):
        GPTConfig(qk_norm="yes")
    with pytest.raises(ValueError, match="zero_init_residual=1 must be true or false"):
        GPTConfig(zero_init_residual=1)


def test_options_survive_save_and_load(tmp_path):
    model = tiny("gpt2.5", n_inner=128, qk_norm=True, tie_word_embeddings=False, zero_init_residual=True)
    model.save_pretrained(tmp_path)
    loaded = GPTForCausalLM.from_pretrained(tmp_path)
    assert (loaded.config.qk_norm, loaded.config.tie_word_embeddings, loaded.config.zero_init_residual) == (True, False, True)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
