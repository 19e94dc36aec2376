import pytest
import torch

from modeling_gpt import PRESETS, GPTConfig, GPTForCausalLM


def test_gpt2_preset_parameter_count():
    # GPT-2 124M: 124,439,808 parameters with tied embeddings at vocabulary 50257;
    # padding to 50304 adds 47 embedding rows of width 768
    config = GPTConfig.from_preset("gpt2")
    with torch.device("meta"):
        model = GPTForCausalLM(config)
    assert config.vocab_size == 50257 and config.padded_vocab_size == 50304
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.num_parameters() == 124_439_808 + 47 * 768


def test_modern_preset():
    config = GPTConfig.from_preset("gpt2.5")
    assert (config.norm, config.mlp, config.position_embedding, config.bias) == ("rmsnorm", "swiglu", "rope", False)
    assert (config.n_inner, config.rope_theta, config.n_layer, config.n_head, config.n_embd) == (2048, 10000.0, 12, 12, 768)


def test_presets_and_overrides():
    assert set(PRESETS) == {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt2.5", "tiny"}
    config = GPTConfig.from_preset("tiny", n_layer=3, vocab_size=1000, bos_token_id=999, eos_token_id=999)
    assert (config.n_layer, config.n_embd, config.vocab_size, config.padded_vocab_size) == (3, 64, 1000, 1024)
    assert GPTConfig.from_preset("gpt2-xl").n_embd == 1600
    with pytest.raises(ValueError, match="unknown preset 'gpt3'.*gpt2-medium"):
        GPTConfig.from_preset("gpt3")


def test_generic_attribute_names():
    config = GPTConfig.from_preset("tiny")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 4)
    assert (config.max_position_embeddings, config.intermediate_size) == (256, 256)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(n_embd=64, n_head=5), "n_embd=64 must be divisible by n_head=5"),
        (dict(norm="batchnorm"), "norm='batchnorm'.*'layernorm', 'rmsnorm'"),
        (dict(mlp="relu"), "mlp='relu'.*'gelu', 'swiglu'"),
        (dict(position_embedding="alibi"), "position_embedding='alibi'.*'learned', 'rope'"),
        (dict(position_embedding="rope", n_embd=60, n_head=4), "even head size.*15"),
        (dict(n_layer=0), "n_layer=0 must be a positive integer"),
        (dict(dropout=1.5), r"dropout=1.5 must be in \[0, 1\)"),
    ],
)
def test_bad_configs_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig.from_preset("tiny", **overrides)


def test_config_round_trip(tmp_path):
    config = GPTConfig.from_preset("gpt2.5", n_layer=2)
    config.save_pretrained(tmp_path)
    loaded = GPTConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.tie_word_embeddings is True


def test_gpt2_initialisation_std():
    config = GPTConfig.from_preset("tiny", n_layer=8, n_embd=256, n_head=4, vocab_size=4096, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = GPTForCausalLM(config)
    residual = 0.02 / (2 * config.n_layer) ** 0.5
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(residual, rel=0.05), name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
            assert abs(p.mean().item()) < 1e-3
        elif name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif ".ln_" in name:
            assert torch.equal(p, torch.ones_like(p)), name
