"""FSDP2 through the shipped configs/accelerate/fsdp.yaml, on 2 CPU processes over gloo: the same losses as DDP, a
sharded checkpoint that resumes exactly after SIGKILL, and a final export that is one ordinary Hugging Face folder.
Muon and --fp8 under FSDP2: test_train_fsdp_recipes.py."""

import json
import re
import signal
import subprocess
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from conftest import ACCELERATE
from fsdp_runs import RECIPE, REPO, SAVE_AT, STEPS, command, fsdp, metrics, run


@pytest.fixture(scope="module")
def root(tmp_path_factory, mini_data):
    if ACCELERATE is None:
        pytest.skip("the accelerate command is not installed")
    root = tmp_path_factory.mktemp("fsdp")
    (root / "data").symlink_to(mini_data)
    (root / "recipe.yaml").write_text(RECIPE)
    ddp = run(command(root, "ddp", "--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"))
    assert "DistributedType.MULTI_CPU" in ddp.stdout
    full = run(fsdp(root, "fsdp"))
    assert "2 process(es) x 1 micro-step(s)" in full.stdout and "DistributedType.FSDP on cpu" in full.stdout

    # SIGKILL the launcher and both ranks once the first sharded checkpoint is in place, then resume
    proc = subprocess.Popen(fsdp(root, "killed"), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not (root / "killed" / "checkpoints" / f"step_{SAVE_AT:07d}").is_dir():
        time.sleep(0.005)
    ranks = psutil.Process(proc.pid).children(recursive=True)  # torchrun starts the ranks in sessions of their own
    for process in [psutil.Process(proc.pid), *ranks]:
        process.kill()
    psutil.wait_procs(ranks, timeout=30)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (root / "killed" / "final").exists()
    resumed = run(fsdp(root, "killed", "--resume_from_checkpoint", "latest"))
    assert f"steps {SAVE_AT} -> {STEPS}" in resumed.stdout or f"steps {2 * SAVE_AT} -> {STEPS}" in resumed.stdout
    return root


@pytest.mark.parametrize("preset", ["tiny", "gpt2.5"])
def test_fsdp_plan_names_the_models_own_modules(preset):
    from modeling_gpt import GPTConfig, GPTForCausalLM

    model = GPTForCausalLM(GPTConfig.from_preset(preset, n_layer=2, n_embd=64, n_head=4, n_inner=128))
    assert model.fsdp_plan == {"transformer.wte": "free_full_weight", "transformer.h.*": "free_full_weight",
                               "transformer.ln_f": "keep_full_weight", "lm_head": "keep_full_weight"}
    names = {re.sub(r"\.\d+(?=\.|$)", ".*", name) for name, _ in model.named_modules()}
    assert set(model.fsdp_plan) <= names


@pytest.mark.slow
def test_fsdp_follows_ddp(root):
    ddp, sharded = metrics(root / "ddp"), metrics(root / "fsdp")
    assert [r["step"] for r in sharded] == list(range(1, STEPS + 1))
    for key in ("loss", "grad_norm", "val_loss"):
        torch.testing.assert_close(torch.tensor([r[key] for r in sharded if key in r]),
                                   torch.tensor([r[key] for r in ddp if key in r]), rtol=1e-5, atol=1e-5, msg=key)
    assert [r.get("samples") for r in sharded] == [r.get("samples") for r in ddp]
    assert sharded[-1]["loss"] < sharded[0]["loss"] - 0.2  # it did train
    want, got = load_file(root / "ddp" / "final" / "model.safetensors"), load_file(root / "fsdp" / "final" / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        # reduce-scatter and all-reduce round differently; Adam scales that up to ~1e-5 over 30 steps
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.slow
def test_sharded_checkpoint_resumes_exactly_after_sigkill(root, assert_same_run):
    checkpoint = root / "fsdp" / "checkpoints" / f"step_{SAVE_AT:07d}"
    # one file per rank for the weights and for the optimizer: a sharded (DCP) checkpoint
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (checkpoint / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert_same_run(root / "fsdp", root / "killed", STEPS)


@pytest.mark.slow
def test_fsdp_export_is_an_ordinary_hugging_face_folder(root):
    from transformers import AutoModelForCausalLM

    from modeling_gpt import GPTForCausalLM

    final, reference = root / "fsdp" / "final", root / "ddp" / "final"
    assert sorted(p.name for p in final.iterdir()) == sorted(p.name for p in reference.iterdir())
    config = json.loads((final / "config.json").read_text())
    assert config["architectures"] == ["GPTForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_gpt.GPTForCausalLM"
    assert "lm_head.weight" not in load_file(final / "model.safetensors")  # tied to the embedding, stored once
    model = AutoModelForCausalLM.from_pretrained(final)
    assert type(model) is GPTForCausalLM and model.lm_head.weight is model.transformer.wte.weight
