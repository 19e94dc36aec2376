"""The contract that libraries built on transformers rely on (what its ModelTesterMixin checks), for both variants,
each checked against transformers' own GPT2LMHeadModel / LlamaForCausalLM on the same weights where one applies.

transformers' sdist ships tests/test_modeling_common.py without the tests/generation and tests/exporters packages
it imports, so the upstream mixin cannot run from it; these are our own tests of the same behaviour.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, StaticCache

import modeling_gpt.modeling_gpt as modeling
from modeling_gpt import GPTConfig, GPTForCausalLM

VOCAB = 1000
ATOL = 1e-5
VARIANTS = ["tiny", "gpt2.5"]


def tiny(preset="tiny", **overrides):
    torch.manual_seed(0)
    fields = dict(vocab_size=VOCAB, n_layer=2, n_embd=64, n_head=4, n_positions=128, initializer_range=0.2,
                  bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    config = GPTConfig.from_preset(preset, **{**fields, **overrides})
    return GPTForCausalLM(config).eval()


def batch(B=2, T=10, seed=1):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("preset", VARIANTS)
def test_hidden_states_and_attentions_equal_the_native_model(preset):
    model = tiny(preset)
    model.set_attn_implementation("eager")
    native = model.to_hf_native().eval()
    native.set_attn_implementation("eager")
    x = batch()
    with torch.no_grad():
        ours = model(x, output_hidden_states=True, output_attentions=True)
        theirs = native(x, output_hidden_states=True, output_attentions=True)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == model.config.n_layer + 1
    assert len(ours.attentions) == len(theirs.attentions) == model.config.n_layer
    for a, b in zip(ours.hidden_states + ours.attentions, theirs.hidden_states + theirs.attentions):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=ATOL)
    with torch.no_grad():
        assert torch.equal(ours.hidden_states[-1], model.transformer(x).last_hidden_state)
    assert ours.attentions[0].shape == (2, 4, 10, 10)
    torch.testing.assert_close(ours.attentions[1].sum(-1), torch.ones(2, 4, 10))


@pytest.mark.parametrize("preset", VARIANTS)
def test_attentions_under_sdpa_come_from_eager_with_a_warning(preset, caplog):
    """transformers' own models return no attentions under sdpa; ours computes that call eagerly (never raises)."""
    model = tiny(preset)  # sdpa
    x = batch()
    with torch.no_grad():
        eager = tiny(preset)
        eager.set_attn_implementation("eager")
        expected = eager(x, output_attentions=True)
        modeling.logger.warning_once.cache_clear()  # once per process: this test looks for it
        with caplog.at_level("WARNING", logger="modeling_gpt.modeling_gpt"):
            got = model(x, output_attentions=True)
            as_tuple = model(x, output_attentions=True, return_dict=False)
        assert model.config._attn_implementation == "sdpa"
    assert "`sdpa` attention does not return attention probabilities" in caplog.text
    assert len(got.attentions) == model.config.n_layer
    for a, b in zip(got.attentions, expected.attentions):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(got.logits, expected.logits, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(as_tuple[-1], got.attentions)  # the tuple form carries the same attentions


def test_config_flags_for_hidden_states():
    model = tiny()
    x = batch()
    with torch.no_grad():
        model.config.output_hidden_states = True
        assert len(model(x).hidden_states) == 3
        assert model(x, output_hidden_states=False).hidden_states is None


@pytest.mark.parametrize("preset", VARIANTS)
def test_the_old_cache_name_warns_and_still_works(preset):
    if modeling.CACHE != "cache":
        pytest.skip("the installed transformers names the cache `past_key_values` itself: nothing is deprecated")
    model = tiny(preset)
    x = batch()
    with torch.no_grad():
        prefill = model(x[:, :6], use_cache=True)
        expected = model(x[:, 6:], cache=copy.deepcopy(prefill.cache)).logits
        with pytest.warns(FutureWarning, match="`past_key_values` is deprecated .* Use `cache` instead"):
            old = model(x[:, 6:], past_key_values=copy.deepcopy(prefill.cache))
        with pytest.warns(FutureWarning, match="`past_key_values` is deprecated .* Use `cache` instead"):
            base = model.transformer(x[:, 6:], past_key_values=copy.deepcopy(prefill.cache))
    torch.testing.assert_close(old.logits, expected)
    assert base.cache.get_seq_length() == 10


@pytest.mark.parametrize("preset", VARIANTS)
def test_return_dict_false_gives_the_same_tuple(preset):
    model = tiny(preset)
    x = batch()
    with torch.no_grad():
        out = model(x, labels=x, output_hidden_states=True)
        as_tuple = model(x, labels=x, output_hidden_states=True, return_dict=False)
        assert isinstance(as_tuple, tuple)
        torch.testing.assert_close(as_tuple[0], out.loss)
        torch.testing.assert_close(as_tuple[1], out.logits)
        assert as_tuple[2] is not None and len(as_tuple[3]) == 3  # the cache, then the hidden states
        model.config.return_dict = False
        from_config = model(x)
        assert isinstance(from_config, tuple) and torch.equal(from_config[0], out.logits)
        base = model.transformer(x, use_cache=False)
        assert isinstance(base, tuple) and len(base) == 1


@pytest.mark.parametrize("preset", VARIANTS)
@pytest.mark.parametrize("new_size", [1010, 950])
def test_resize_token_embeddings_trains_and_reloads(tmp_path, preset, new_size):
    model = tiny(preset, eos_token_id=0, bos_token_id=0)
    x = batch()
    with torch.no_grad():
        before = model(x % new_size).logits[..., : min(new_size, VOCAB)]
    model.resize_token_embeddings(new_size)
    assert model.config.vocab_size == model.config.padded_vocab_size == new_size
    assert model.transformer.wte.weight.shape[0] == new_size  # exactly the rows asked for, as in transformers
    assert model.lm_head.weight is model.transformer.wte.weight
    x = x % new_size
    with torch.no_grad():
        after = model(x).logits
    assert after.shape[-1] == new_size
    torch.testing.assert_close(after[..., : min(new_size, VOCAB)], before)  # the kept tokens are untouched
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model(x, labels=x).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    model.eval().save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.vocab_size == new_size
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits)


@pytest.mark.parametrize("preset", VARIANTS)
def test_eager_equals_sdpa_on_every_unpadded_position(preset):
    model = tiny(preset)
    x = batch(3, 12)
    mask = torch.ones_like(x)
    mask[1, :4] = 0  # left padding
    mask[2, 9:] = 0  # right padding
    with torch.no_grad():
        out = {}
        for attn in ("eager", "sdpa"):
            model.set_attn_implementation(attn)
            out[attn] = model(x, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(out["sdpa"][real], out["eager"][real], atol=ATOL, rtol=ATOL)
    assert torch.isfinite(out["sdpa"]).all() and torch.isfinite(out["eager"]).all()


@pytest.mark.parametrize("preset", VARIANTS)
def test_padding_free_packed_batch_equals_separate_sequences(preset):
    model = tiny(preset)
    a, b = batch(1, 7, seed=2), batch(1, 5, seed=3)
    packed = torch.cat([a, b], dim=1)
    position_ids = torch.cat([torch.arange(7), torch.arange(5)])[None]
    with torch.no_grad():  # a training set-up: no cache, no attention mask, positions restart per sequence
        together = model(packed, position_ids=position_ids, use_cache=False).logits
        torch.testing.assert_close(together[:, :7], model(a).logits, atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(together[:, 7:], model(b).logits, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("preset", VARIANTS)
def test_static_cache_generation_matches_uncached_forward(preset):
    model = tiny(preset)
    x = batch(2, 6)
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, min_new_tokens=8,
                             do_sample=False, cache_implementation="static", pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True)
        reference = model(out.sequences, use_cache=False).logits
    assert isinstance(out[modeling.CACHE], StaticCache)
    for step, logits in enumerate(out.logits):
        torch.testing.assert_close(logits, reference[:, 5 + step], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("preset", VARIANTS)
def test_full_graph_compiled_decoding_with_a_static_cache(preset):
    """`_can_compile_fullgraph = True` is a promise: a decoding step compiles with fullgraph=True and is exact."""
    torch._dynamo.reset()
    model = tiny(preset)
    x = batch(2, 6)
    cache = StaticCache(config=model.config, max_cache_len=16)
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    with torch.no_grad():
        next_id = model(x, use_cache=True, **{modeling.CACHE: cache}).logits[:, -1:].argmax(-1)  # prefill, eager
        ids, logits = x, []
        for _ in range(3):
            ids = torch.cat([ids, next_id], dim=1)
            logits.append(compiled(next_id, use_cache=True, **{modeling.CACHE: cache}).logits[:, -1])
            next_id = logits[-1].argmax(-1, keepdim=True)
        reference = model(ids, use_cache=False).logits
    for step, got in enumerate(logits):
        torch.testing.assert_close(got, reference[:, 6 + step], atol=1e-4, rtol=1e-4)


def test_loss_goes_through_the_lm_head_module():
    """Hooks on lm_head (LoRA, quantisation, offload) see the training forward too."""
    model = tiny()
    x = batch()
    calls = []
    handle = model.lm_head.register_forward_hook(lambda module, args, output: calls.append(args[0].shape) or output * 2)
    with torch.no_grad():
        out = model(x, labels=x)
    handle.remove()
    assert calls == [(2, 10, 64)]
    with torch.no_grad():
        doubled = 2 * model(x).logits
    expected = F.cross_entropy(doubled[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("preset", VARIANTS)
def test_resize_gives_the_rows_asked_for(preset):
    """transformers' test_resize_tokens_embeddings / test_resize_embeddings_untied: rows == the size asked for."""
    for tied in (True, False):
        model = tiny(preset, tie_word_embeddings=tied)
        assert model.transformer.wte.weight.shape[0] == 1024  # padded to a multiple of 64 at construction
        model.resize_token_embeddings(VOCAB + 10)
        assert model.transformer.wte.weight.shape[0] == model.lm_head.weight.shape[0] == VOCAB + 10
        model.resize_token_embeddings(VOCAB - 15)
        assert model.transformer.wte.weight.shape[0] == model.lm_head.weight.shape[0] == VOCAB - 15
        model.resize_token_embeddings(VOCAB + 13, pad_to_multiple_of=64)
        assert model.transformer.wte.weight.shape[0] == model.lm_head.weight.shape[0] == 1024
        assert (model.config.vocab_size, model.config.padded_vocab_size) == (VOCAB + 13, 1024)
        with torch.no_grad():
            assert model(batch() % (VOCAB + 13)).logits.shape[-1] == VOCAB + 13


@pytest.mark.parametrize("preset", VARIANTS)
def test_defaults_that_miss_a_small_vocabulary_load_and_run(preset):
    """bos/eos default to GPT-2's 50256; transformers warns (or accepts) such a config and so do we."""
    config = GPTConfig.from_preset(preset, vocab_size=VOCAB, n_layer=2, n_embd=64, n_head=4, n_positions=128)
    assert config.bos_token_id == config.eos_token_id == 50256
    with torch.no_grad():
        assert GPTForCausalLM(config).eval()(batch()).logits.shape == (2, 10, VOCAB)


def test_a_small_gpt2_converts_with_equal_logits():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4)).eval()
    ours = GPTForCausalLM.from_gpt2(gpt2).eval()
    assert ours.config.bos_token_id == 50256
    x = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, gpt2(x).logits, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_row_longer_than_n_positions_with_positions_inside(attn):
    """transformers' test_*_padding_matches_padding_free_with_position_ids: the limit applies to the positions."""
    model = tiny(n_positions=38)
    model.set_attn_implementation(attn)
    rows = [batch(1, n, seed=n) for n in (30, 25, 15)]
    packed = torch.cat(rows, dim=1)  # 70 tokens, positions restart per sequence
    position_ids = torch.cat([torch.arange(r.shape[1]) for r in rows])[None]
    with torch.no_grad():
        together = model(packed, position_ids=position_ids, use_cache=False).logits
        start = 0
        for r in rows:
            torch.testing.assert_close(together[:, start : start + r.shape[1]], model(r).logits, atol=ATOL, rtol=ATOL)
            start += r.shape[1]
        with pytest.raises(ValueError, match=r"position id 38 is past the model's n_positions=38: use ids in \[0, 37\]"):
            model(packed[:, :39], position_ids=torch.arange(39)[None])
        with pytest.raises(ValueError, match="39 tokens .cache included. exceed the model's n_positions=38"):
            model(packed[:, :39])


def test_config_runs_transformers_validation_and_ours():
    with pytest.raises(ValueError, match="n_embd=64 must be divisible by n_head=5"):
        GPTConfig.from_preset("tiny", n_head=5)
    with pytest.raises(Exception, match="layer_types"):  # transformers' own validator, not replaced by ours
        GPTConfig.from_preset("tiny", layer_types=["bogus", "bogus"])
