"""Training FLOPs per token and device peaks: the MFU of the trainer's log line and of bench/."""

import torch

from .configuration_gpt import GPTConfig

# Dense (no sparsity) tensor-core peaks in TFLOP/s from the vendors' datasheets. The longest name found in
# torch.cuda.get_device_name() wins ("H100 PCIe" over "H100"). "tf32" is what fp32 matmuls get once
# torch.set_float32_matmul_precision("high") lets them use tensor cores.
PEAK_TFLOPS = {
    "B200": {"bf16": 2250.0, "fp16": 2250.0},
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "GH200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM
    "H100 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 59.9},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H800": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "A800": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "fp16": 362.1, "tf32": 183.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "A10G": {"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 31.2},
    "A10": {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "RTX 4090": {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6},
    "V100": {"fp16": 125.0, "fp32": 15.7},
    "MI300X": {"bf16": 1307.4, "fp16": 1307.4, "tf32": 653.7, "fp32": 163.4},
}


def matmul_params(config: GPTConfig) -> int:
    """Parameters that take part in a matmul per token: the blocks and the output head (real vocabulary only).

    Position embeddings are a lookup, not a matmul, and the padded vocabulary rows are not useful work, so
    our model and transformers' GPT-2 are charged the same FLOPs and their MFU ratio is their speed ratio.
    """
    C, n_inner = config.n_embd, config.n_inner
    mlp = (3 if config.mlp == "swiglu" else 2) * C * n_inner
    return config.n_layer * (4 * C * C + mlp) + config.vocab_size * C


def flops_per_token(config: GPTConfig, seq_len: int) -> int:
    """PaLM's training FLOPs per token (appendix B): 6N for the weights plus 12·L·H·Q·T for attention."""
    L, H, Q = config.n_layer, config.n_head, config.head_dim
    return 6 * matmul_params(config) + 12 * L * H * Q * seq_len


def peak_tflops(device_name: str, dtype: str = "bf16") -> float | None:
    """Dense peak of the device for this dtype, or None for a CPU, an unlisted GPU or an unlisted dtype."""
    if dtype == "fp32" and torch.get_float32_matmul_precision() != "highest":
        dtype = "tf32"
    matches = [name for name in PEAK_TFLOPS if name in device_name]
    return PEAK_TFLOPS[max(matches, key=len)].get(dtype) if matches else None
