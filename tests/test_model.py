"""Parity with transformers' own GPT-2 and Llama, generation, loss and training features (tiny models, CPU)."""

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from modeling_gpt import GPTConfig, GPTForCausalLM
from modeling_gpt.convert import from_llama

VOCAB = 1000  # pads to 1024: every test below also exercises the padded rows


def tiny(preset="tiny", **overrides):
    torch.manual_seed(0)
    config = GPTConfig.from_preset(preset, vocab_size=VOCAB, n_layer=2, n_embd=64, n_head=4, n_positions=128,
                                   bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, **overrides)
    return GPTForCausalLM(config).eval()


def random_gpt2(**overrides):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                        bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, **overrides)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-zero biases and norms so that every weight matters
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def batch(B=3, T=20, seed=1):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def greedy(model, ids, n=12, **kwargs):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                          pad_token_id=VOCAB - 1, **kwargs)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_from_gpt2_parity(attn):
    ref = random_gpt2()
    ref.set_attn_implementation(attn)
    ours = GPTForCausalLM.from_gpt2(ref)
    ours.set_attn_implementation(attn)
    x = batch()
    with torch.no_grad():
        a, b = ref(x, labels=x), ours(x, labels=x)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.loss, a.loss, atol=1e-6, rtol=1e-6)
    assert torch.equal(greedy(ours, x[:, :5]), greedy(ref, x[:, :5]))


def test_from_gpt2_folder_and_round_trip(tmp_path):
    ref = random_gpt2()
    ref.save_pretrained(tmp_path)
    ours = GPTForCausalLM.from_gpt2(tmp_path)
    assert ours.config.padded_vocab_size == 1024
    back = ours.to_hf_native()
    assert isinstance(back, GPT2LMHeadModel)
    ref_sd, back_sd = ref.state_dict(), back.state_dict()
    assert ref_sd.keys() == back_sd.keys()
    for k in ref_sd:
        assert torch.equal(ref_sd[k], back_sd[k]), k
    assert back.lm_head.weight.data_ptr() == back.transformer.wte.weight.data_ptr()


def test_to_gpt2_without_biases_is_the_same_function():
    ours = tiny(bias=False)
    native = ours.to_hf_native()
    x = batch()
    with torch.no_grad():
        torch.testing.assert_close(native(x).logits, ours(x).logits, atol=1e-5, rtol=1e-5)


def test_modern_variant_parity_with_llama():
    ours = tiny("gpt2.5", n_inner=128)
    ours.set_attn_implementation("eager")
    llama = ours.to_hf_native()
    llama.set_attn_implementation("eager")
    assert type(llama).__name__ == "LlamaForCausalLM"
    x = batch()
    with torch.no_grad():
        a, b = llama(x, labels=x), ours(x, labels=x)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.loss, a.loss, atol=1e-6, rtol=1e-6)
    assert torch.equal(greedy(ours, x[:, :5]), greedy(llama, x[:, :5]))
    again = from_llama(llama)
    for k, v in ours.state_dict().items():
        if "wte" in k or "lm_head" in k:
            v = v[:VOCAB]  # the padded rows are not carried by the native model
            assert torch.equal(again.state_dict()[k][:VOCAB], v), k
        else:
            assert torch.equal(again.state_dict()[k], v), k


def test_combination_without_native_twin_is_refused():
    with pytest.raises(ValueError, match="no native transformers twin.*'norm': 'rmsnorm'.*GPT2LMHeadModel needs"):
        tiny(norm="rmsnorm").to_hf_native()
    with pytest.raises(ValueError, match="gelu_new"):
        GPTForCausalLM.from_gpt2(random_gpt2(activation_function="relu"))


def test_logits_cover_the_real_vocabulary_only():
    model = tiny()
    x = batch()
    with torch.no_grad():
        loss = model(x, labels=x).loss
        model.lm_head.weight[VOCAB:] = 100.0  # padded rows would win every argmax if they were scored
        out = model(x, labels=x)
    assert out.logits.shape == (3, 20, VOCAB)
    torch.testing.assert_close(out.loss, loss)
    sampled = model.generate(batch()[:, :4], attention_mask=torch.ones(3, 4, dtype=torch.long), do_sample=True,
                             max_new_tokens=30, pad_token_id=0)
    assert sampled.max() < VOCAB


def test_loss_is_shifted_cross_entropy_with_ignore_index():
    model = tiny()
    x = batch()
    labels = x.clone()
    labels[0, 5:9] = -100
    with torch.no_grad():
        out = model(x, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


def test_logits_to_keep():
    model = tiny()
    x = batch()
    with torch.no_grad():
        full = model(x).logits
        torch.testing.assert_close(model(x, logits_to_keep=1).logits, full[:, -1:])
        torch.testing.assert_close(model(x, logits_to_keep=torch.tensor([0, 7])).logits, full[:, [0, 7]])


@pytest.mark.parametrize("preset", ["tiny", "gpt2.5"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_left_padded_batch_equals_one_by_one(preset, attn):
    model = tiny(preset)
    model.set_attn_implementation(attn)
    prompts = [batch(1, n, seed=n)[0] for n in (3, 9, 6)]
    pad = 0
    width = max(len(p) for p in prompts)
    ids = torch.stack([F.pad(p, (width - len(p), 0), value=pad) for p in prompts])
    mask = torch.stack([F.pad(torch.ones_like(p), (width - len(p), 0)) for p in prompts])
    steps = dict(max_new_tokens=10, do_sample=False, pad_token_id=pad, output_logits=True, return_dict_in_generate=True)
    together = model.generate(ids, attention_mask=mask, **steps)
    for i, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], attention_mask=torch.ones_like(prompt[None]), **steps)
        assert torch.equal(together.sequences[i, width:], alone.sequences[0, len(prompt):])
        for step, (a, b) in enumerate(zip(together.logits, alone.logits)):
            torch.testing.assert_close(a[i], b[0], atol=1e-4, rtol=1e-4, msg=lambda m: f"step {step}: {m}")


@pytest.mark.parametrize("preset", ["tiny", "gpt2.5"])
def test_eager_equals_sdpa(preset):
    model = tiny(preset)
    x = batch()
    mask = torch.ones_like(x)
    mask[1, :4] = 0  # a left-padded row
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        sdpa = model(x, attention_mask=mask).logits
        model.set_attn_implementation("eager")
        eager = model(x, attention_mask=mask).logits
    torch.testing.assert_close(sdpa[:, 4:], eager[:, 4:], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    def grads(checkpointing):
        model = tiny("gpt2.5").train()
        if checkpointing:
            # activation_checkpointing_enable since transformers 5.23, gradient_checkpointing_enable before
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
            assert all(block.gradient_checkpointing for block in model.transformer.h)
        x = batch()
        model(x, labels=x).loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_tied_embeddings_share_gradients_and_untied_do_not():
    tied = tiny()
    assert tied.lm_head.weight is tied.transformer.wte.weight
    untied = tiny(tie_word_embeddings=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    x = batch()
    untied(x, labels=x).loss.backward()
    assert untied.lm_head.weight.grad is not None and untied.transformer.wte.weight.grad is not None


def test_sequence_beyond_context_is_refused():
    model = tiny()
    with pytest.raises(ValueError, match="129 tokens .cache included. exceed the model.s n_positions=128"):
        model(torch.zeros(1, 129, dtype=torch.long))
