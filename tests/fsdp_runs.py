"""What the FSDP tests share: a tiny recipe and `accelerate launch` commands for it, DDP or FSDP2 through the shipped
configs/accelerate/fsdp.yaml, on 2 CPU processes over gloo."""

import subprocess
from pathlib import Path

import pytest

from conftest import ACCELERATE, free_port
from train_accelerate import MetricsLog

REPO = Path(__file__).resolve().parents[1]
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


def command(root, out, *launch_args, script=REPO / "train_accelerate.py"):
    # mixed precision "no": the comparison with DDP is about sharding, not rounding
    return [ACCELERATE, "launch", *launch_args, "--num_processes", "2", "--mixed_precision", "no",
            "--main_process_port", str(free_port()), str(script), "--config", str(root / "recipe.yaml"),
            "--data_dir", str(root / "data"), "--output_dir", str(root / out)]


def fsdp(root, out, *extra, script=REPO / "train_accelerate.py"):
    return command(root, out, "--config_file", str(REPO / "configs" / "accelerate" / "fsdp.yaml"), script=script) + list(extra)


def short_run(root, mini_data, steps, every, extra=""):
    """root made ready for launches of RECIPE cut to `steps` steps, checkpointed and evaluated every `every`."""
    if ACCELERATE is None:
        pytest.skip("the accelerate command is not installed")
    (root / "data").symlink_to(mini_data)
    (root / "recipe.yaml").write_text(RECIPE.replace(f"max_steps: {STEPS}", f"max_steps: {steps}")
                                      .replace(f"save_interval: {SAVE_AT}", f"save_interval: {every}")
                                      .replace(f"eval_interval: {SAVE_AT}", f"eval_interval: {every}") + extra)


def run(cmd):
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def metrics(folder):
    return MetricsLog(folder / "metrics.jsonl").read()
