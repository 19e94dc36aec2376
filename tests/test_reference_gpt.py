"""bench/reference_gpt.py, the plain PyTorch GPT-2 of the benchmarks: the parameters and initialisation of
GPTForCausalLM classic, and a comparable loss at init."""

import math
import sys
from pathlib import Path

import torch

from modeling_gpt import GPTConfig, GPTForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from reference_gpt import PlainGPT  # noqa: E402

CONFIG = dict(vocab_size=500, bos_token_id=499, eos_token_id=499, n_positions=64, n_embd=64, n_layer=2, n_head=4)


def std_by_role(named_params) -> dict:
    """The std of each kind of weight: embeddings, residual projections, other linear layers."""
    groups = {"embedding": [], "residual": [], "linear": []}
    for name, p in named_params:
        if p.dim() < 2:
            continue
        role = "embedding" if "emb" in name or "wte" in name or "wpe" in name else (
            "residual" if name.endswith(("c_proj.weight", "proj.weight", "down.weight")) else "linear")
        groups[role].append(p.detach().flatten())
    return {role: torch.cat(ps).std().item() for role, ps in groups.items()}


def test_same_parameter_count_and_initialisation():
    config = GPTConfig(**CONFIG)
    torch.manual_seed(0)
    ours, plain = GPTForCausalLM(config), PlainGPT(config)
    assert plain.num_parameters() == ours.num_parameters()
    assert plain.head.weight is plain.tok_emb.weight
    want = {"embedding": 0.02, "residual": 0.02 / math.sqrt(2 * config.n_layer), "linear": 0.02}
    for model in (ours, plain):
        got = std_by_role(model.named_parameters())
        assert all(abs(got[k] - want[k]) < 0.1 * want[k] for k in want), (type(model).__name__, got)


def test_loss_at_init_is_comparable():
    config = GPTConfig(**CONFIG)
    torch.manual_seed(0)
    ours, plain = GPTForCausalLM(config), PlainGPT(config)
    x = torch.randint(0, config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(1))
    ours_loss, plain_loss = ours(input_ids=x, labels=x).loss.item(), plain(input_ids=x, labels=x).loss.item()
    assert abs(ours_loss - math.log(config.vocab_size)) < 0.1
    assert abs(plain_loss - ours_loss) < 0.1
    shifted = plain(input_ids=x[:, :-1], shift_labels=x[:, 1:]).loss.item()
    assert abs(shifted - plain_loss) < 0.05


def test_from_ours_holds_the_same_weights():
    config = GPTConfig(**CONFIG)
    torch.manual_seed(0)
    ours = GPTForCausalLM(config)
    plain = PlainGPT.from_ours(ours)
    assert plain.head.weight is plain.tok_emb.weight
    x = torch.randint(0, config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(plain(input_ids=x).logits[..., : config.vocab_size], ours(input_ids=x).logits,
                               atol=1e-5, rtol=1e-5)
