"""FSDP2 through the shipped configs/accelerate/fsdp.yaml, on 2 CPU processes over gloo: the same losses as DDP, a
sharded checkpoint that resumes exactly after SIGKILL, and a final export that is one ordinary Hugging Face folder."""

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from train_accelerate import MetricsLog

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
STEPS, SAVE_AT = 30, 10

RECIPE = f"""\
model_preset: tiny
micro_batch_size: 4
seq_len: 64
total_batch_tokens: 512
max_steps: {STEPS}
learning_rate: 3.0e-3
warmup_steps: 2
eval_interval: {SAVE_AT}
val_batches: 2
sample_prompts: ["The"]
sample_max_new_tokens: 4
log_interval: 1
save_interval: {SAVE_AT}
keep_last_k: 0
tracker: none
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(root, out, *launch_args):
    # mixed precision "no": the comparison with DDP is about sharding, not rounding
    return [ACCELERATE, "launch", *launch_args, "--num_processes", "2", "--mixed_precision", "no",
            "--main_process_port", str(free_port()), str(REPO / "train_accelerate.py"), "--config", str(root / "recipe.yaml"),
            "--data_dir", str(root / "data"), "--output_dir", str(root / out)]


def fsdp(root, out, *extra):
    return command(root, out, "--config_file", str(REPO / "configs" / "accelerate" / "fsdp.yaml")) + list(extra)


def run(cmd):
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def metrics(folder):
    return MetricsLog(folder / "metrics.jsonl").read()


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


@pytest.mark.slow
def test_muon_under_fsdp_follows_ddp_and_resumes_exactly(tmp_path, mini_data, assert_same_run):
    """Two optimizers on one FSDP model (Muon and AdamW): checkpointed and resumed like one."""
    if ACCELERATE is None:
        pytest.skip("the accelerate command is not installed")
    (tmp_path / "data").symlink_to(mini_data)
    steps = 6
    (tmp_path / "recipe.yaml").write_text(RECIPE.replace(f"max_steps: {STEPS}", f"max_steps: {steps}")
                                          .replace(f"save_interval: {SAVE_AT}", "save_interval: 3")
                                          .replace(f"eval_interval: {SAVE_AT}", "eval_interval: 3")
                                          + "optimizer: muon\n")
    run(command(tmp_path, "ddp", "--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"))
    run(fsdp(tmp_path, "fsdp"))
    ddp, sharded = metrics(tmp_path / "ddp"), metrics(tmp_path / "fsdp")
    # Muon's Newton-Schulz runs in bfloat16: reduce-scatter vs all-reduce rounding shows at ~1e-5 in the losses
    torch.testing.assert_close(torch.tensor([r["loss"] for r in sharded]), torch.tensor([r["loss"] for r in ddp]),
                               rtol=1e-4, atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "fsdp" / "checkpoints" / "step_0000003").glob("optimizer_*")) == [
        "optimizer_0", "optimizer_1"]
    shutil.copytree(tmp_path / "fsdp", tmp_path / "resumed", ignore=shutil.ignore_patterns("final", "step_0000006"))
    run(fsdp(tmp_path, "resumed", "--resume_from_checkpoint", "latest"))
    assert_same_run(tmp_path / "fsdp", tmp_path / "resumed", steps)
