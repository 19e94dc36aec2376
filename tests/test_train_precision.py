"""The recipes' settings on CPU: bf16 mixed precision with torch.compile follows the fp32 run, resumes exactly from
its checkpoint, and exports a final folder that loads and generates like the trained weights.

--fp8 true the same way, where torchao is installed: its float8 matmuls run (emulated) on a CPU too, so the real
trainer trains the blocks in float8, follows the bf16 run, resumes exactly and exports ordinary float32 weights.
gpt-train refuses --fp8 on a CPU (no speed to gain); FLOAT8_LAUNCH lifts that one check.

One thread: with several, compiled CPU kernels add the embedding gradient in a varying order (~2e-9 apart from run
to run), which no resume could reproduce.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FLOAT8_LAUNCH
from train_accelerate import MetricsLog

REPO = Path(__file__).resolve().parents[1]
STEPS = 8
# bf16 autocast rounds every matmul input to 8 bits of mantissa; over 8 steps at lr 3e-3 the mean losses stay this close.
# float8 (e4m3 forward, e5m2 gradients, dynamic per-tensor scales) in the blocks' matmuls stays as close to bf16
# (9e-4 apart at most with torchao 0.18)
LOSS_TOLERANCE = 1e-2

RECIPE = f"""\
model_preset: tiny
micro_batch_size: 4
seq_len: 64
total_batch_tokens: 512
max_steps: {STEPS}
learning_rate: 3.0e-3
warmup_steps: 2
eval_interval: 4
val_batches: 2
sample_prompts: ["The"]
sample_max_new_tokens: 4
log_interval: 1
save_interval: 4
keep_last_k: 0
tracker: none
"""


def train(root, out, *extra, program=(str(REPO / "train_accelerate.py"),)):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, *program, "--config", str(root / "recipe.yaml"),
            "--data_dir", str(root / "data"), "--output_dir", str(root / out), *extra]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def metrics(folder):
    return MetricsLog(folder / "metrics.jsonl").read()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mini_data):
    """fp32 eager, and bf16 + compile; then the latter resumed from its step-4 checkpoint."""
    root = tmp_path_factory.mktemp("precision")
    (root / "data").symlink_to(mini_data)
    (root / "recipe.yaml").write_text(RECIPE)
    train(root, "fp32", "--mixed_precision", "no")
    bf16 = train(root, "bf16", "--mixed_precision", "bf16", "--compile", "true")
    assert "DistributedType.NO on cpu, bf16" in bf16.stdout
    shutil.copytree(root / "bf16", root / "resumed", ignore=shutil.ignore_patterns("final", "step_0000008"))
    resumed = train(root, "resumed", "--mixed_precision", "bf16", "--compile", "true", "--resume_from_checkpoint", "latest")
    assert f"steps 4 -> {STEPS}" in resumed.stdout
    return root


@pytest.fixture(scope="module")
def float8_runs(runs):
    """In the same folder: bf16 + compile with --fp8 true, then that run resumed from its step-4 checkpoint."""
    pytest.importorskip("torchao.float8", reason="torchao is an optional extra (pip install -e '.[gpu]')")
    float8 = ("--mixed_precision", "bf16", "--compile", "true", "--fp8", "true")
    fp8 = train(runs, "fp8", *float8, program=("-c", FLOAT8_LAUNCH))
    assert "DistributedType.NO on cpu, bf16 + float8 in 8 linear layers |" in fp8.stdout  # each block's 4
    shutil.copytree(runs / "fp8", runs / "fp8-resumed", ignore=shutil.ignore_patterns("final", "step_0000008"))
    resumed = train(runs, "fp8-resumed", *float8, "--resume_from_checkpoint", "latest", program=("-c", FLOAT8_LAUNCH))
    assert f"steps 4 -> {STEPS}" in resumed.stdout
    return runs


def assert_losses_follow(reference, run):
    want, got = metrics(reference), metrics(run)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for key in ("loss", "val_loss"):
        expected = torch.tensor([r[key] for r in want if key in r])
        measured = torch.tensor([r[key] for r in got if key in r])
        assert len(measured) == len(expected) > 0
        torch.testing.assert_close(measured, expected, rtol=0, atol=LOSS_TOLERANCE, msg=key)
    assert any(a["loss"] != b["loss"] for a, b in zip(got, want))  # the other precision really ran
    assert got[-1]["loss"] < got[0]["loss"] - 0.3


def exported_as_trained(run):
    """final/ loaded by AutoModelForCausalLM, checked to hold the last checkpoint's weights; (model, those weights)."""
    from transformers import AutoModelForCausalLM

    from modeling_gpt import GPTForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(run / "final").eval()
    assert isinstance(exported, GPTForCausalLM)
    trained = load_file(run / "checkpoints" / f"step_{STEPS:07d}" / "model.safetensors")
    # fp32 master weights, under their own names (no torch.compile or wrapper prefix)
    assert all(t.dtype == torch.float32 for t in trained.values())
    state = exported.state_dict()
    for name, tensor in trained.items():
        assert torch.equal(state[name], tensor), name
    return exported, trained


@pytest.mark.slow
def test_bf16_compiled_losses_follow_fp32(runs):
    assert_losses_follow(runs / "fp32", runs / "bf16")


@pytest.mark.slow
def test_bf16_compiled_run_resumes_exactly(runs, assert_same_run):
    assert_same_run(runs / "bf16", runs / "resumed", STEPS)


@pytest.mark.slow
def test_final_folder_loads_and_generates_like_the_trained_weights(runs):
    from transformers import AutoTokenizer

    from modeling_gpt import GPTConfig, GPTForCausalLM

    final = runs / "bf16" / "final"
    exported, trained = exported_as_trained(runs / "bf16")
    reference = GPTForCausalLM(GPTConfig.from_pretrained(final)).eval()
    reference.load_state_dict(trained, strict=False)  # the tied head is stored once
    tokenizer = AutoTokenizer.from_pretrained(final)
    ids = tokenizer("The history of", return_tensors="pt").input_ids
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, output_logits=True,
                  return_dict_in_generate=True, pad_token_id=tokenizer.eos_token_id)
    a, b = exported.generate(ids, **kwargs), reference.generate(ids, **kwargs)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(torch.stack(a.logits), torch.stack(b.logits))


@pytest.mark.slow
def test_float8_losses_follow_bf16(float8_runs):
    assert_losses_follow(float8_runs / "bf16", float8_runs / "fp8")


@pytest.mark.slow
def test_float8_run_resumes_exactly(float8_runs, assert_same_run):
    assert_same_run(float8_runs / "fp8", float8_runs / "fp8-resumed", STEPS)


@pytest.mark.slow
def test_float8_checkpoint_and_final_folder_hold_what_a_bf16_run_holds(float8_runs):
    for name in (f"checkpoints/step_{STEPS:07d}/model.safetensors", "final/model.safetensors"):
        want, have = (load_file(float8_runs / run / name) for run in ("bf16", "fp8"))
        assert {k: (v.shape, v.dtype) for k, v in have.items()} == {k: (v.shape, v.dtype) for k, v in want.items()}
    exported, _ = exported_as_trained(float8_runs / "fp8")
    assert not any("Float8" in type(m).__name__ for m in exported.modules())
