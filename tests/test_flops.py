"""PaLM FLOPs per token and the device peak table: the MFU of the trainer and of bench/."""

import pytest
import torch

from modeling_gpt import GPTConfig, GPTForCausalLM
from modeling_gpt.flops import flops_per_token, matmul_params, peak_tflops


def test_flops_per_token_of_gpt2_matches_the_issue_target():
    config = GPTConfig.from_preset("gpt2")
    assert matmul_params(config) == 12 * 12 * 768**2 + 50257 * 768  # 123.5M: blocks + head, no wpe
    fpt = flops_per_token(config, 1024)
    assert fpt == 6 * matmul_params(config) + 12 * 12 * 12 * 64 * 1024
    # 45% MFU of an H100's 989 TFLOP/s is "about 520K tokens/s" for the 124M model at T=1024
    assert 515_000 < 0.45 * peak_tflops("NVIDIA H100 80GB HBM3", "bf16") * 1e12 / fpt < 525_000


@pytest.mark.parametrize("preset", ["tiny", "gpt2.5"])
def test_matmul_params_counts_the_model_linears(preset):
    config = GPTConfig.from_preset(preset, n_layer=2, n_embd=64, n_head=4, vocab_size=500, bos_token_id=0, eos_token_id=0)
    model = GPTForCausalLM(config)
    blocks = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and name.startswith("transformer.h."))
    assert matmul_params(config) == blocks + config.vocab_size * config.n_embd


def test_peak_tflops_table():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("NVIDIA H200", "bf16") == 989.4
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == 312.0
    assert peak_tflops("NVIDIA A10G", "bf16") == 70.0
    assert peak_tflops("NVIDIA L40S", "bf16") == 362.1
    assert peak_tflops("cpu (2 threads)", "fp32") is None
    assert peak_tflops("Tesla T4") is None
    assert peak_tflops("NVIDIA H100 NVL") == 835.5  # the longest matching name wins over "H100"
    assert peak_tflops("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 tensor cores
    before = torch.get_float32_matmul_precision()
    try:  # fp32 matmuls on tensor cores run at the TF32 peak
        torch.set_float32_matmul_precision("high")
        assert peak_tflops("NVIDIA H100 80GB HBM3", "fp32") == 494.7
        torch.set_float32_matmul_precision("highest")
        assert peak_tflops("NVIDIA H100 80GB HBM3", "fp32") == 66.9
    finally:
        torch.set_float32_matmul_precision(before)
