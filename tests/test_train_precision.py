"""The recipes' settings on CPU: bf16 mixed precision with torch.compile follows the fp32 run, resumes exactly from
its checkpoint, and exports a final folder that loads and generates like the trained weights.

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

from train_accelerate import MetricsLog

REPO = Path(__file__).resolve().parents[1]
STEPS = 8
# bf16 autocast rounds every matmul input to 8 bits of mantissa; over 8 steps at lr 3e-3 the mean losses stay this close
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


def train(root, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, str(REPO / "train_accelerate.py"), "--config", str(root / "recipe.yaml"),
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


@pytest.mark.slow
def test_bf16_compiled_losses_follow_fp32(runs):
    fp32, bf16 = metrics(runs / "fp32"), metrics(runs / "bf16")
    assert [r["step"] for r in bf16] == list(range(1, STEPS + 1))
    for key in ("loss", "val_loss"):
        want = torch.tensor([r[key] for r in fp32 if key in r])
        got = torch.tensor([r[key] for r in bf16 if key in r])
        assert len(got) == len(want) > 0
        torch.testing.assert_close(got, want, rtol=0, atol=LOSS_TOLERANCE, msg=key)
    assert any(a["loss"] != b["loss"] for a, b in zip(bf16, fp32))  # bf16 really ran
    assert bf16[-1]["loss"] < bf16[0]["loss"] - 0.3


@pytest.mark.slow
def test_bf16_compiled_run_resumes_exactly(runs, assert_same_run):
    assert_same_run(runs / "bf16", runs / "resumed", STEPS)


@pytest.mark.slow
def test_final_folder_loads_and_generates_like_the_trained_weights(runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling_gpt import GPTConfig, GPTForCausalLM

    final = runs / "bf16" / "final"
    exported = AutoModelForCausalLM.from_pretrained(final).eval()
    assert isinstance(exported, GPTForCausalLM)
    trained = load_file(runs / "bf16" / "checkpoints" / f"step_{STEPS:07d}" / "model.safetensors")
    # fp32 master weights, under their own names (no torch.compile or wrapper prefix)
    assert all(t.dtype == torch.float32 for t in trained.values())
    state = exported.state_dict()
    for name, tensor in trained.items():
        assert torch.equal(state[name], tensor), name
    reference = GPTForCausalLM(GPTConfig.from_pretrained(final)).eval()
    reference.load_state_dict(trained, strict=False)  # the tied head is stored once
    tokenizer = AutoTokenizer.from_pretrained(final)
    ids = tokenizer("The history of", return_tensors="pt").input_ids
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, output_logits=True,
                  return_dict_in_generate=True, pad_token_id=tokenizer.eos_token_id)
    a, b = exported.generate(ids, **kwargs), reference.generate(ids, **kwargs)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(torch.stack(a.logits), torch.stack(b.logits))
