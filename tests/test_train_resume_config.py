"""A resume never silently changes the run: a different schedule, optimizer, batch, model or data set is refused
with a message naming the setting and both values, unless --allow_config_change, which metrics.jsonl records."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import train_accelerate as ta

REPO = Path(__file__).resolve().parents[1]

RECIPE = """\
model_preset: tiny
micro_batch_size: 4
seq_len: 64
total_batch_tokens: 512
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

STATE = {"step": 2, "config": {k: getattr(ta.TrainArguments(), k) for k in ta.RESUME_SETTINGS},
         "model_config": {"n_layer": 2, "n_embd": 64, "dropout": 0.0, "transformers_version": "5.0.0"},
         "data": {"dir": "/data/a", "sha256": "a" * 64}}


def test_config_changes_names_each_setting_with_both_values():
    settings = {**STATE["config"], "max_steps": 50, "learning_rate": 1e-3, "eval_interval": 7}
    model_config = {**STATE["model_config"], "dropout": 0.1, "transformers_version": "5.24.0", "qk_norm": True}
    data = {"dir": "/data/b", "sha256": "b" * 64}
    changes = ta.config_changes(STATE, settings, model_config, data)
    assert changes == {
        "max_steps": (19073, 50), "learning_rate": (6e-4, 1e-3), "model dropout": (0.0, 0.1),
        "data set": ("/data/a (sha256 aaaaaaaaaaaa)", "/data/b (sha256 bbbbbbbbbbbb)"),
    }  # evaluation settings, library versions and keys the checkpoint does not know are not changes
    # the same shards in another folder are the same data set
    assert ta.config_changes(STATE, STATE["config"], STATE["model_config"], {"dir": "/data/b", "sha256": "a" * 64}) == {}


def test_check_resume_refuses_changes_and_a_max_steps_below_the_checkpoint():
    args = ta.TrainArguments(max_steps=50)
    with pytest.raises(ta.ConfigError, match=r"resuming ck would silently change max_steps: checkpoint 19073, now 50; "
                                             r"learning_rate: checkpoint 0.0006, now 0.001\. .*--allow_config_change"):
        ta.check_resume(Path("ck"), STATE, {"max_steps": (19073, 50), "learning_rate": (6e-4, 1e-3)}, args)
    ta.check_resume(Path("ck"), STATE, {"max_steps": (19073, 50)}, ta.TrainArguments(max_steps=50, allow_config_change=True))
    with pytest.raises(ta.ConfigError, match=r"max_steps=1 is below step 2 of the checkpoint ck: nothing to train"):
        ta.check_resume(Path("ck"), STATE, {}, ta.TrainArguments(max_steps=1, allow_config_change=True))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mini_data):
    """A 4-step run with checkpoints at steps 2 and 4, and a copy of its data in another folder."""
    root = tmp_path_factory.mktemp("resume-config")
    (root / "data").symlink_to(mini_data)
    shutil.copytree(root / "data", root / "moved")
    (root / "recipe.yaml").write_text(RECIPE)
    train(root, "out", check=True)
    return root


def train(root, out, *extra, data="data", check=False):
    argv = [sys.executable, str(REPO / "train_accelerate.py"), "--config", str(root / "recipe.yaml"),
            "--data_dir", str(root / data), "--output_dir", str(root / out), *extra]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=check)


def resume(root, name, *extra, data="data"):
    """Resume a copy of the run from its step-2 checkpoint."""
    shutil.copytree(root / "out", root / name)
    return train(root, name, "--resume_from_checkpoint", str(root / name / "checkpoints" / "step_0000002"), *extra, data=data)


@pytest.mark.slow
def test_resume_refuses_a_changed_schedule_and_data_set(trained):
    done = resume(trained, "longer", "--max_steps", "8", "--warmup_steps", "3")
    assert done.returncode == 2  # bad input (cli_guard: 2; 1 is for a run that could not finish)
    assert "gpt-train: error: resuming" in done.stderr
    assert "max_steps: checkpoint 4, now 8; warmup_steps: checkpoint 2, now 3" in done.stderr

    # the same shards with one token changed: another data set, whatever the folder
    other = trained / "other-data"
    shutil.copytree(trained / "data", other)
    manifest = json.loads((other / "manifest.json").read_text())
    entry = next(s for s in manifest["shards"] if s["split"] == "train")
    raw = bytearray((other / entry["file"]).read_bytes())
    raw[-1] ^= 1
    (other / entry["file"]).write_bytes(raw)
    entry["sha256"] = hashlib.sha256(raw).hexdigest()
    (other / "manifest.json").write_text(json.dumps(manifest))
    done = resume(trained, "other-run", data="other-data")
    assert done.returncode == 2 and "data set: checkpoint" in done.stderr, done.stderr[-2000:]


@pytest.mark.slow
def test_resume_from_moved_data_and_an_allowed_change(trained):
    # the data folder moved: same shards, so the run resumes and ends as the original did
    moved = resume(trained, "moved-run", data="moved")
    assert moved.returncode == 0, moved.stderr[-2000:]
    original = (trained / "out" / "metrics.jsonl").read_text()
    assert (trained / "moved-run" / "metrics.jsonl").read_text().count("\n") == original.count("\n") == 4

    allowed = resume(trained, "allowed", "--max_steps", "6", "--allow_config_change")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    records = ta.MetricsLog(trained / "allowed" / "metrics.jsonl").read()
    assert [r["step"] for r in records] == [1, 2, 2, 3, 4, 5, 6]
    assert records[2] == {"step": 2, "config_change": {"max_steps": [4, 6]}}
