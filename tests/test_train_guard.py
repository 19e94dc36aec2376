"""The trainer's guards: a NaN loss stops the run with the last good checkpoint intact; bad settings and
an output folder that already holds a run are refused with a clear message."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from train_accelerate import MetricsLog

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MINI = SHARED / "fineweb-edu-mini"

RECIPE = """\
model_preset: tiny
micro_batch_size: 4
seq_len: 64
total_batch_tokens: 256
max_steps: 4
learning_rate: 1.0e-3
warmup_steps: 2
eval_interval: 0
log_interval: 1
save_interval: 2
keep_last_k: 0
mixed_precision: "no"
tracker: none
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4."""
    if not MINI.is_dir():
        pytest.skip(f"the offline FineWeb-Edu stand-in is missing: {MINI}")
    import tokenize_fineweb

    root = tmp_path_factory.mktemp("guard")
    tokenize_fineweb.main(["--dataset", str(MINI), "--name", "sample-10BT", "--output", str(root / "data"), "--train-tokenizer",
                           "--vocab-size", "512", "--tokenizer-train-docs", "20", "--max-docs", "20",
                           "--shard-size", "40000", "--val-tokens", "4096"])
    (root / "recipe.yaml").write_text(RECIPE)
    run(root, root / "out", check=True)
    return root


def run(root, out, *extra, check=False):
    argv = [sys.executable, str(REPO / "train_accelerate.py"), "--config", str(root / "recipe.yaml"),
            "--data_dir", str(root / "data"), "--output_dir", str(out), *extra]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=check)


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(trained):
    out = trained / "out"
    step4 = out / "checkpoints" / "step_0000004"
    before = digest(step4)
    # an absurd learning rate from step 5 on: the weights blow up and the loss of step 6 is not finite
    result = run(trained, out, "--resume_from_checkpoint", "latest", "--max_steps", "8", "--learning_rate", "1e30",
                 "--warmup_steps", "0", "--allow_config_change")
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("gpt-train: error: training loss is nan at step 6; stopping")
    assert str(step4) in message and "--resume_from_checkpoint" in message
    # nothing was saved from the poisoned weights; the checkpoint resumes would pick is untouched
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002", "step_0000004"]
    assert digest(step4) == before
    records = MetricsLog(out / "metrics.jsonl").read()
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5]  # step 5 (the blow-up step) still had a finite loss
    assert records[4]["config_change"]["learning_rate"] == [1e-3, 1e30]


def test_fresh_start_refuses_a_folder_with_checkpoints(trained):
    result = run(trained, trained / "out")
    assert result.returncode == 2
    assert "already holds checkpoints" in result.stderr and "--resume_from_checkpoint latest" in result.stderr


def test_bad_settings_exit_with_a_clear_message(trained):
    result = run(trained, trained / "bad", "--total_batch_tokens", "1000")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "gpt-train: error: total_batch_tokens=1000 is not a multiple of micro_batch_size * seq_len * world_size = "
        "4 * 64 * 1 = 256; change one of them (e.g. total_batch_tokens=1024)"
    )
