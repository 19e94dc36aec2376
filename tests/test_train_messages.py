"""What the trainer tells its user: the checkpoint it resumed from, a finished run left as it is (final/ not
re-exported), one line for more processes than devices, no library noise between its log lines; and final/
written with the published tokenizer settings and the usual file modes."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import train_accelerate
from conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]


def test_more_processes_than_devices_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(train_accelerate.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train_accelerate.os, "cpu_count", lambda: 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    with pytest.raises(train_accelerate.ConfigError, match=r"^8 processes were launched on this machine, which has 2 CPU "
                                                           r"cores and no GPU: launch at most 2 "):
        train_accelerate.check_devices()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    train_accelerate.check_devices()  # two CPU processes on two cores: the documented DDP-over-gloo test


def test_the_tied_weights_notice_is_dropped_and_nothing_else(caplog):
    train_accelerate.quiet_libraries()
    logger = logging.getLogger("accelerate.utils.other")
    with caplog.at_level(logging.WARNING, logger="accelerate.utils.other"):
        logger.warning("[RANK 0] Removed shared tensor {'lm_head.weight'} while saving. This should be OK, but check")
        logger.warning("Removed shared tensor {'transformer.h.0.mlp.weight'} while saving.")
    assert [r.getMessage() for r in caplog.records] == ["Removed shared tensor {'transformer.h.0.mlp.weight'} while saving."]


@pytest.mark.slow
def test_resume_line_finished_rerun_and_final_folder(tmp_path):
    if not (SHARED / "fineweb-edu-mini").is_dir():
        pytest.skip(f"the shared data is not at {SHARED}")
    data = tmp_path / "data"
    argv = [sys.executable, "-m", "train_accelerate", "--config", str(ROOT / "configs" / "tiny.yaml"), "--output_dir",
            str(tmp_path / "run"), "--data_dir", str(data), "--tokenize_dataset", str(SHARED / "fineweb-edu-mini"),
            "--tokenize_tokenizer", str(SHARED / "gpt2-tokenizer"), "--max_steps", "2", "--save_interval", "2",
            "--eval_interval", "0", "--log_interval", "1"]
    first = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Writing model shards" not in first.stderr and "Removed shared tensor" not in first.stderr
    final = tmp_path / "run" / "final"
    stamp = (final / "model.safetensors").stat().st_mtime_ns
    tokenizer_config = json.loads((final / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == 256 and tokenizer_config["pad_token"] == "<|endoftext|>"
    assert tokenizer_config["padding_side"] == "left" and "is_local" not in tokenizer_config
    umask = os.umask(0)
    os.umask(umask)
    assert (final / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert final.stat().st_mode & 0o777 == 0o777 & ~umask

    again = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    checkpoint = tmp_path / "run" / "checkpoints" / "step_0000002"
    assert f"resumed from {checkpoint} (step 2, 4,096 tokens)" in again.stdout
    assert f"{tmp_path / 'run'} already finished: {checkpoint} is step 2 of max_steps=2" in again.stdout
    assert (final / "model.safetensors").stat().st_mtime_ns == stamp  # final/ left as it was
