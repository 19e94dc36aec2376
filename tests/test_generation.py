"""Generation checked on numbers: every step's logits against the uncached forward and against transformers' own
GPT2LMHeadModel / LlamaForCausalLM generating from the same weights.

Random tiny models repeat one token whatever the context, so comparing token sequences proves nothing about the
KV cache. Every test here compares logits (or beam scores) step by step, and `test_checks_see_a_dropped_cache`
proves that they fail when the cache is dropped, as transformers 5.24's rename did.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import pipeline

import modeling_gpt.modeling_gpt as modeling
from modeling_gpt import GPTConfig, GPTForCausalLM

VOCAB = 1000
PAD = 0
ATOL = 1e-4


def tiny(preset="tiny", seed=0, **overrides):
    torch.manual_seed(seed)
    # a wide init makes every logit depend strongly on the context, so a lost context shows in the numbers
    fields = dict(vocab_size=VOCAB, n_layer=2, n_embd=64, n_head=4, n_positions=128, initializer_range=0.2,
                  bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, pad_token_id=PAD)
    config = GPTConfig.from_preset(preset, **{**fields, **overrides})
    return GPTForCausalLM(config).eval()


def prompts(lengths=(3, 9, 6), seed=0):
    """A left-padded batch: ids and attention mask."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(1, VOCAB, (n,), generator=g) for n in lengths]
    width = max(lengths)
    ids = torch.stack([F.pad(r, (width - len(r), 0), value=PAD) for r in rows])
    mask = torch.stack([F.pad(torch.ones_like(r), (width - len(r), 0)) for r in rows])
    return ids, mask


def uncached_logits(model, sequences, mask):
    """Next-token logits after every prefix, from one full forward without a cache (positions from the mask)."""
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(sequences, attention_mask=mask, position_ids=position_ids, use_cache=False).logits


def generate(model, ids, mask, n=8, **kwargs):
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, pad_token_id=PAD,
                              output_logits=True, return_dict_in_generate=True, **kwargs)


def assert_steps_match_uncached(model, out, prompt_len, prompt_mask):
    sequences = out.sequences
    mask = torch.cat([prompt_mask, torch.ones_like(sequences[:, prompt_len:])], dim=1)
    reference = uncached_logits(model, sequences, mask)
    assert len(out.logits) == sequences.shape[1] - prompt_len
    for step, logits in enumerate(out.logits):
        torch.testing.assert_close(logits, reference[:, prompt_len + step - 1], atol=ATOL, rtol=ATOL,
                                   msg=lambda m: f"step {step}: {m}")


@pytest.mark.parametrize("preset", ["tiny", "gpt2.5"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_greedy_left_padded_batch_matches_uncached_forward(preset, attn):
    model = tiny(preset)
    model.set_attn_implementation(attn)
    ids, mask = prompts()
    out = generate(model, ids, mask, do_sample=False)
    assert_steps_match_uncached(model, out, ids.shape[1], mask)


@pytest.mark.parametrize("preset", ["tiny", "gpt2.5"])
def test_sampling_matches_uncached_forward(preset):
    model = tiny(preset)
    ids, mask = prompts()
    torch.manual_seed(1)
    out = generate(model, ids, mask, do_sample=True, top_k=0, temperature=1.0)
    assert_steps_match_uncached(model, out, ids.shape[1], mask)


@pytest.mark.parametrize("preset", ["tiny", "gpt2.5"])
def test_beam_scores_match_uncached_forward(preset):
    """With length_penalty 0 a beam's score is the sum of its tokens' log-probabilities: recompute it uncached."""
    model = tiny(preset)
    ids, mask = prompts()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, num_beams=3,
                             num_return_sequences=3, length_penalty=0.0, do_sample=False, pad_token_id=PAD,
                             output_scores=True, return_dict_in_generate=True)
    prompt_len = ids.shape[1]
    full_mask = torch.cat([mask.repeat_interleave(3, 0), torch.ones_like(out.sequences[:, prompt_len:])], dim=1)
    logprobs = uncached_logits(model, out.sequences, full_mask).log_softmax(-1)
    new = out.sequences[:, prompt_len:]
    expected = logprobs[:, prompt_len - 1 : -1].gather(-1, new[..., None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(out.sequences_scores, expected, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("preset", ["tiny", "gpt2.5"])
def test_assisted_generation_matches_uncached_forward(preset):
    model, assistant = tiny(preset), tiny(preset, seed=1)
    ids, mask = prompts(lengths=(7,))
    out = generate(model, ids, mask, do_sample=False, assistant_model=assistant)
    assert_steps_match_uncached(model, out, ids.shape[1], mask)


@pytest.mark.parametrize("preset", ["tiny", "gpt2.5"])
def test_continue_from_a_returned_cache_matches_uncached_forward(preset):
    model = tiny(preset)
    ids, mask = prompts(lengths=(5, 8))
    first = generate(model, ids, mask, n=4, do_sample=False)
    cache = first[modeling.CACHE]
    assert cache is not None and cache.get_seq_length() == first.sequences.shape[1] - 1
    mask2 = torch.cat([mask, torch.ones_like(first.sequences[:, ids.shape[1]:])], dim=1)
    second = generate(model, first.sequences, mask2, n=5, do_sample=False, **{modeling.CACHE: cache})
    assert_steps_match_uncached(model, second, first.sequences.shape[1], mask2)


@pytest.mark.parametrize("preset", ["tiny", "gpt2.5"])
def test_inputs_embeds_generation_matches_uncached_forward(preset):
    model = tiny(preset)
    ids, mask = prompts(lengths=(4, 7))
    with torch.no_grad():
        out = model.generate(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=mask, max_new_tokens=6,
                             min_new_tokens=6, do_sample=False, pad_token_id=PAD, output_logits=True,
                             return_dict_in_generate=True)
    out.sequences = torch.cat([ids, out.sequences], dim=1)  # generate returns only the new tokens here
    assert_steps_match_uncached(model, out, ids.shape[1], mask)


def test_forward_takes_the_cache_under_both_names():
    model = tiny()
    ids = prompts(lengths=(6,))[0]
    with torch.no_grad():
        reference = model(ids, use_cache=False).logits[:, -1]
        for name in ("cache", "past_key_values"):
            prefix = model(ids[:, :-1], use_cache=True)
            cache = prefix[modeling.CACHE]
            step = model(ids[:, -1:], use_cache=True, **{name: cache})
            torch.testing.assert_close(step.logits[:, -1], reference, atol=ATOL, rtol=ATOL)
            assert step[modeling.CACHE] is cache and cache.get_seq_length() == ids.shape[1]
        if modeling.CACHE == "cache":  # as transformers' own models: a warning, and `cache` wins
            with pytest.warns(FutureWarning, match="Both `past_key_values` and `cache` are set"):
                model(ids, cache=None, past_key_values=cache)
        else:
            with pytest.raises(ValueError, match="not both"):
                model(ids, cache=cache, past_key_values=cache)


@pytest.mark.parametrize(("preset", "native_class"), [("tiny", "GPT2LMHeadModel"), ("gpt2.5", "LlamaForCausalLM")])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_generation_equals_the_native_model_step_by_step(preset, native_class, attn):
    model = tiny(preset)
    native = model.to_hf_native().eval()
    assert type(native).__name__ == native_class
    model.set_attn_implementation(attn)
    native.set_attn_implementation(attn)
    ids, mask = prompts()
    ours, theirs = generate(model, ids, mask, do_sample=False), generate(native, ids, mask, do_sample=False)
    assert torch.equal(ours.sequences, theirs.sequences)
    for step, (a, b) in enumerate(zip(ours.logits, theirs.logits)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=ATOL, msg=lambda m: f"step {step}: {m}")


def test_pipeline_continues_with_the_uncached_argmax(model_dir):
    """The pipeline's greedy text, checked against a loop of full uncached forwards (no cache anywhere)."""
    model = tiny(vocab_size=50257, bos_token_id=50256, eos_token_id=50256)  # GPT-2's vocabulary, context-sensitive
    generator = pipeline("text-generation", model=model, tokenizer=str(model_dir))
    prompt = "The meaning of life is"
    text = generator(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)[0]["generated_text"]
    ids = generator.tokenizer(prompt, return_tensors="pt").input_ids
    for _ in range(8):
        with torch.no_grad():
            next_id = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    assert text == generator.tokenizer.decode(ids[0])


def test_our_code_triggers_no_deprecation(model_dir, capfd):
    """Generation, the pipeline and a returned cache use only the installed release's current names."""
    from transformers.utils.logging import warning_once

    warning_once.cache_clear()  # transformers says each deprecation once per process: make this test's count
    model = tiny("gpt2.5")
    ids, mask = prompts()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = generate(model, ids, mask, do_sample=False)
        generate(model, out.sequences, torch.ones_like(out.sequences), n=2, **{modeling.CACHE: out[modeling.CACHE]})
        model(ids, attention_mask=mask, output_hidden_states=True)
        pipeline("text-generation", model=str(model_dir))("Hello", max_new_tokens=3, do_sample=False)
    messages = [str(w.message) for w in caught] + capfd.readouterr().err.splitlines()
    assert not [m for m in messages if "deprecat" in m.lower()]


def test_checks_see_a_dropped_cache(monkeypatch, model_dir):
    """transformers 5.24's failure mode (a cache that never reaches the model) fails the checks above."""
    monkeypatch.setattr(modeling, "either_cache", lambda cache, past_key_values: None)
    failing = [
        lambda: test_greedy_left_padded_batch_matches_uncached_forward("tiny", "sdpa"),
        lambda: test_greedy_left_padded_batch_matches_uncached_forward("gpt2.5", "eager"),
        lambda: test_sampling_matches_uncached_forward("tiny"),
        lambda: test_beam_scores_match_uncached_forward("gpt2.5"),
        lambda: test_assisted_generation_matches_uncached_forward("tiny"),
        lambda: test_inputs_embeds_generation_matches_uncached_forward("tiny"),
        lambda: test_generation_equals_the_native_model_step_by_step("tiny", "GPT2LMHeadModel", "sdpa"),
        lambda: test_pipeline_continues_with_the_uncached_argmax(model_dir),
    ]
    for check in failing:
        with pytest.raises(AssertionError):
            check()
