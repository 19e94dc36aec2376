"""Exact resume: a run killed with SIGKILL after a checkpoint and resumed ends exactly like an uninterrupted one."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from train_accelerate import MetricsLog

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MINI = SHARED / "fineweb-edu-mini"
STEPS, SAVE_AT = 40, 20

RECIPE = f"""\
model_preset: tiny
micro_batch_size: 4
seq_len: 64
total_batch_tokens: 512
max_steps: {STEPS}
learning_rate: 1.0e-2
warmup_steps: 4
eval_interval: 10
val_batches: 2
sample_prompts: ["The"]
sample_max_new_tokens: 4
log_interval: 1
save_interval: {SAVE_AT}
keep_last_k: 0
mixed_precision: "no"
tracker: none
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if not MINI.is_dir():
        pytest.skip(f"the offline FineWeb-Edu stand-in is missing: {MINI}")
    import tokenize_fineweb

    root = tmp_path_factory.mktemp("resume")
    data = root / "data"
    # a 512-token BPE keeps the model's head small: every step takes milliseconds
    tokenize_fineweb.main(["--dataset", str(MINI), "--name", "sample-10BT", "--output", str(data), "--train-tokenizer",
                           "--vocab-size", "512", "--tokenizer-train-docs", "40", "--max-docs", "40",
                           "--shard-size", "40000", "--val-tokens", "8192"])
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE)
    return root, data, recipe


def command(setup, out, *extra):
    root, data, recipe = setup
    return [sys.executable, str(REPO / "train_accelerate.py"), "--config", str(recipe), "--data_dir", str(data),
            "--output_dir", str(out), *extra]


def metrics(out):
    return MetricsLog(out / "metrics.jsonl").read()


# the faster recipe: Muon's momentum buffers and both optimizers' states must come back exactly too
MUON = ["--optimizer", "muon", "--muon_learning_rate", "0.05", "--lr_schedule", "wsd", "--decay_ratio", "0.4"]


@pytest.mark.parametrize("recipe", [pytest.param([], id="adamw"), pytest.param(MUON, id="muon", marks=pytest.mark.slow)])
def test_killed_and_resumed_run_equals_uninterrupted_run(setup, recipe):
    root = setup[0] / (recipe[1] if recipe else "adamw")
    full, killed = root / "full", root / "killed"
    subprocess.run(command(setup, full, *recipe), check=True, cwd=REPO, capture_output=True)

    # kill -9 once the run is past its checkpoint at SAVE_AT, so metrics.jsonl holds steps that must be redone
    proc = subprocess.Popen(command(setup, killed, *recipe), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 50
    while time.monotonic() < deadline and proc.poll() is None:
        log = killed / "metrics.jsonl"
        if log.exists() and any(json.loads(line)["step"] > SAVE_AT + 1 for line in log.read_text().splitlines()[:-1]):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "final").exists()
    assert [p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith("step_")] == [f"step_{SAVE_AT:07d}"]

    done = subprocess.run(command(setup, killed, *recipe, "--resume_from_checkpoint", "latest"), cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"steps {SAVE_AT} -> {STEPS}" in done.stdout

    expected, resumed = metrics(full), metrics(killed)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))  # no step twice, none missing
    for key in ("loss", "lr", "grad_norm", "tokens", "val_loss", "samples"):
        assert [r.get(key) for r in resumed] == [r.get(key) for r in expected], key
    assert expected[-1]["loss"] < expected[0]["loss"] - 0.5  # it did learn

    want, got = load_file(full / "final" / "model.safetensors"), load_file(killed / "final" / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        assert (want[name] == got[name]).all(), name
    saved = sorted(p.name for p in (killed / "checkpoints" / f"step_{SAVE_AT:07d}").glob("optimizer*.bin"))
    assert saved == (["optimizer.bin", "optimizer_1.bin"] if recipe else ["optimizer.bin"])
    for name in ("step_0000020", "step_0000040"):
        state = json.loads((killed / "checkpoints" / name / "trainer_state.json").read_text())
        assert state["step"] == int(name[5:]) and state["tokens"] == state["step"] * 512

