"""--fp8: refused in one line where float8 cannot run (before any data is read or step taken), and the conversion
touches exactly the blocks' linear layers and leaves the parameters' names and dtypes as they were."""

import sys
from types import ModuleType

import pytest
import torch

import train_accelerate
from modeling_gpt import GPTConfig, GPTForCausalLM

TINY = dict(vocab_size=96, bos_token_id=95, eos_token_id=95, n_positions=32, n_embd=64, n_layer=2, n_head=2)
BLOCK_LINEARS = [f"transformer.h.{i}.{name}" for i in range(2)
                 for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_fp8_is_refused_without_a_gpu_before_step_one(tmp_path, refused):
    line = refused(train_accelerate.main, ["--model_preset", "tiny", "--data_dir", str(tmp_path / "no-data"),
                                           "--output_dir", str(tmp_path / "out"), "--fp8", "true", "--tracker", "none"])
    assert line == ("gpt-train: error: --fp8 true needs a CUDA GPU of compute capability >= 8.9 (Ada, Hopper or newer); "
                    "this run is on cpu: drop --fp8")
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_fp8_is_refused_on_an_older_gpu_and_without_torchao(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(train_accelerate.ConfigError) as info:
        train_accelerate.check_fp8(cuda)
    assert str(info.value) == ("--fp8 true needs compute capability >= 8.9 (Ada, Hopper or newer); "
                               "NVIDIA A100-SXM4-80GB has 8.0: drop --fp8")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(train_accelerate.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(train_accelerate.ConfigError) as info:
        train_accelerate.check_fp8(cuda)
    assert str(info.value) == '--fp8 true needs torchao, which is not installed: pip install -e ".[gpu]", or drop --fp8'


@pytest.mark.parametrize("variant", ["classic", "modern"])
def test_only_the_blocks_linear_layers_are_converted(monkeypatch, variant):
    """torchao's convert_to_float8_training asks module_filter_fn of every nn.Linear; a stand-in records the answers."""
    asked = {}

    def convert(model, module_filter_fn):
        for fqn, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                asked[fqn] = module_filter_fn(module, fqn)
        return model

    fake = ModuleType("torchao.float8")
    fake.convert_to_float8_training = convert
    monkeypatch.setitem(sys.modules, "torchao", ModuleType("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.float8", fake)
    config = GPTConfig(**TINY, **({"mlp": "swiglu", "norm": "rmsnorm", "position_embedding": "rope"}
                                  if variant == "modern" else {}))
    train_accelerate.to_float8(GPTForCausalLM(config))
    assert sorted(fqn for fqn, chosen in asked.items() if chosen) == sorted(BLOCK_LINEARS)
    assert [fqn for fqn, chosen in asked.items() if not chosen] == ["lm_head"]


def test_a_linear_whose_dims_float8_cannot_tile_stays_as_it_is():
    assert train_accelerate.float8_filter(torch.nn.Linear(64, 192), "transformer.h.0.attn.c_attn")
    assert not train_accelerate.float8_filter(torch.nn.Linear(64, 200), "transformer.h.0.mlp.c_fc")
    assert not train_accelerate.float8_filter(torch.nn.Linear(64, 96), "lm_head")
    assert not train_accelerate.float8_filter(torch.nn.Embedding(96, 64), "transformer.h.0.wte")


def test_real_torchao_keeps_names_and_dtypes():
    """Where torchao is installed: Float8Linear keeps the weight as an ordinary parameter, so state_dict (what
    checkpoints and final/ save) has the same keys, shapes and dtypes, and no float8 tensor."""
    pytest.importorskip("torchao.float8", reason="torchao is an optional extra (pip install -e '.[gpu]')")
    model = GPTForCausalLM(GPTConfig(**TINY))
    before = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    converted = train_accelerate.to_float8(model)
    assert sorted(type(converted.get_submodule(fqn)).__name__ for fqn in BLOCK_LINEARS) == ["Float8Linear"] * 8
    assert type(converted.lm_head) is torch.nn.Linear
    assert {k: (v.shape, v.dtype) for k, v in converted.state_dict().items()} == before
