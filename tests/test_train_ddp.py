"""Distributed equivalence: 2 processes (DDP over gloo) x 1 micro-step == 1 process x 2 micro-steps."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ACCELERATE, free_port
from train_accelerate import MetricsLog

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MINI = SHARED / "fineweb-edu-mini"

RECIPE = """\
model_preset: tiny
micro_batch_size: 4
seq_len: 64
total_batch_tokens: 512
max_steps: 6
learning_rate: 3.0e-3
warmup_steps: 2
eval_interval: 3
val_batches: 3
hellaswag: true
hellaswag_limit: 8
sample_prompts: []
log_interval: 2
save_interval: 0
mixed_precision: "no"
tracker: none
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    if not MINI.is_dir():
        pytest.skip(f"the offline FineWeb-Edu stand-in is missing: {MINI}")
    if ACCELERATE is None:
        pytest.skip("the accelerate command is not installed")
    import tokenize_fineweb

    root = tmp_path_factory.mktemp("ddp")
    tokenize_fineweb.main(["--dataset", str(MINI), "--name", "sample-10BT", "--output", str(root / "data"), "--train-tokenizer",
                           "--vocab-size", "512", "--tokenizer-train-docs", "20", "--max-docs", "20",
                           "--shard-size", "40000", "--val-tokens", "4096"])
    (root / "recipe.yaml").write_text(RECIPE + f"hellaswag_data_dir: {SHARED}\n")
    return root


# the faster recipe: Muon orthogonalises the all-reduced gradient, the same matrix as the accumulated one
MUON = ["--optimizer", "muon", "--muon_learning_rate", "0.05", "--lr_schedule", "wsd"]


@pytest.mark.parametrize("recipe", [pytest.param([], id="adamw"), pytest.param(MUON, id="muon", marks=pytest.mark.slow)])
def test_two_processes_equal_one_process_with_accumulation(root, recipe):
    args = [str(REPO / "train_accelerate.py"), "--config", str(root / "recipe.yaml"), "--data_dir", str(root / "data"), *recipe]
    root = root / (recipe[1] if recipe else "adamw")
    single = subprocess.run([sys.executable, *args, "--output_dir", str(root / "single")], cwd=REPO, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]
    assert "1 process(es) x 2 micro-step(s)" in single.stdout
    # --multi_gpu on a machine without GPUs runs 2 real processes with DDP over gloo (--cpu would run one)
    launch = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    ddp = subprocess.run([*launch, *args, "--output_dir", str(root / "ddp")], cwd=REPO, capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 process(es) x 1 micro-step(s)" in ddp.stdout and "MULTI_CPU" in ddp.stdout

    one, two = (MetricsLog(root / name / "metrics.jsonl").read() for name in ("single", "ddp"))
    assert [r["step"] for r in two] == list(range(1, 7))  # one line per step, written by the main process only
    # Muon runs Newton-Schulz in bfloat16 (torch's choice) and normalises each matrix's update: the ~1e-7 round-off
    # between an all-reduced and an accumulated gradient flips bfloat16 roundings, and in the directions where a
    # gradient is nearly zero (early attention) it becomes a unit-size update. Those directions barely move the
    # loss, so Muon runs agree on the losses (to 1e-4), not element by element on the weights.
    tol = dict(loss=1e-4, grad_norm=2e-3, val_loss=1e-4) if recipe else {}
    for key in ("loss", "grad_norm", "val_loss", "hellaswag_acc_norm"):  # evaluation is split over the ranks too
        torch.testing.assert_close(torch.tensor([r.get(key, 0.0) for r in two]), torch.tensor([r.get(key, 0.0) for r in one]),
                                   rtol=tol.get(key, 1e-5), atol=tol.get(key, 1e-5), msg=key)
    assert [r["lr"] for r in two] == [r["lr"] for r in one]
    assert "val_loss" in two[2] and 0 <= two[5]["hellaswag_acc_norm"] <= 1
    want, got = load_file(root / "single" / "final" / "model.safetensors"), load_file(root / "ddp" / "final" / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want if not recipe else ():
        # the key bias has an exactly-zero gradient (softmax ignores it); Adam scales its round-off noise up to ~1e-5
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4, msg=name)
    # and the runs did train
    assert min(r["loss"] for r in one[3:]) < one[0]["loss"] - 0.3
