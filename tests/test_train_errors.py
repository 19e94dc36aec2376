"""gpt-train on hostile input: one output_dir has one run, a finished run is never replaced unasked, a damaged or
foreign checkpoint is never loaded (nor run), non-finite weights are never saved, and what the first evaluation
needs is checked before the first step. Each failure is one line `gpt-train: error: ...`, non-zero, no traceback."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import tokenize_fineweb
import train_accelerate
from conftest import ctrl_c_as_on_a_terminal

REPO = Path(__file__).resolve().parents[1]
WORDS = "the cat sat on a mat while rivers carry water from high mountains down to the open sea".split()
RECIPE = """\
model_preset: tiny
micro_batch_size: 2
seq_len: 32
total_batch_tokens: 64
max_steps: 4
learning_rate: 1.0e-3
warmup_steps: 1
eval_interval: 0
log_interval: 1
save_interval: 2
keep_last_k: 0
sample_prompts: []
mixed_precision: "no"
tracker: none
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Token shards of a 300-token BPE trained on the data itself (no download)."""
    root = tmp_path_factory.mktemp("data")
    with open(root / "docs.jsonl", "w") as f:
        for i in range(300):
            f.write(json.dumps({"text": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(40))}) + "\n")
    tokenize_fineweb.main(["--data-files", str(root / "docs.jsonl"), "--output", str(root / "shards"), "--train-tokenizer",
                           "--vocab-size", "300", "--tokenizer-train-docs", "50", "--shard-size", "4000",
                           "--val-tokens", "1000", "--workers", "1"])
    (root / "recipe.yaml").write_text(RECIPE)
    return root


def argv(data, out, *extra):
    return ["--config", str(data / "recipe.yaml"), "--data_dir", str(data / "shards"), "--output_dir", str(out), *extra]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A finished 4-step run: checkpoints at steps 2 and 4, final/, metrics.jsonl."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train_accelerate.main(argv(data, out))
    return out


@pytest.fixture
def run(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"






def steps_logged(out) -> list[int]:
    rows = train_accelerate.MetricsLog(out / "metrics.jsonl").read()
    return [row["step"] for row in rows if "loss" in row]


@pytest.mark.parametrize("setting, value", [("learning_rate", "inf"), ("learning_rate", "nan"), ("grad_clip", "inf"),
                                            ("adam_epsilon", "nan")])
def test_non_finite_settings_are_refused(data, tmp_path, setting, value, refused):
    line = refused(train_accelerate.main, argv(data, tmp_path / "out", f"--{setting}", value))
    assert line == f"gpt-train: error: {setting}={float(value)} must be a finite number"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("setting, value", [("n_positions", "1000000000000"), ("n_embd", "262144")])
def test_a_model_that_cannot_fit_is_refused_before_allocating_it(data, tmp_path, refused, setting, value):
    line = refused(train_accelerate.main, argv(data, tmp_path / "out", f"--{setting}", value))
    assert line.startswith(f"gpt-train: error: the model (n_layer=2, n_embd=") and f"{setting}={value}" in line
    assert "more than the" in line and "GiB of this cpu; choose smaller sizes" in line


def test_init_from_a_folder_that_does_not_exist_is_named(data, tmp_path, refused):
    line = refused(train_accelerate.main, argv(data, tmp_path / "out", "--init_from", str(tmp_path / "nope")))
    assert line == (f"gpt-train: error: init_from='{tmp_path / 'nope'}': no such folder; give a Hugging Face folder "
                    "or a Hub id")


@pytest.mark.parametrize("source", ["final", "checkpoint"])
def test_init_from_weights_with_a_missing_or_unexpected_tensor_is_refused_naming_it(run, data, tmp_path, refused, source):
    from safetensors.torch import load_file, save_file

    folder = run / "final" if source == "final" else run / "checkpoints" / "step_0000004"
    weights = load_file(folder / "model.safetensors")
    del weights["transformer.h.0.attn.c_attn.weight"]
    weights["transformer.h.9.extra"] = torch.zeros(3)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    line = refused(train_accelerate.main, argv(data, tmp_path / "out", "--init_from", str(folder)))
    assert line == (f"gpt-train: error: init_from {folder}: the weights do not fit the model (missing "
                    "transformer.h.0.attn.c_attn.weight; unexpected transformer.h.9.extra): a missing tensor would be "
                    "left random and an unexpected one dropped, so nothing is loaded; use the whole checkpoint the model "
                    "was saved with")
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("source", ["final", "checkpoint"])
def test_init_from_pickle_weights_is_refused_without_advice_to_unpickle_them(run, data, tmp_path, capsys, runs_code,
                                                                             source):
    final = run / "final" if source == "final" else run / "checkpoints" / "step_0000004"
    (final / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({"transformer.wte.weight": runs_code(marker)}, final / "pytorch_model.bin")
    with pytest.raises(SystemExit) as info:
        train_accelerate.main(argv(data, tmp_path / "out", "--init_from", str(final)))
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.strip().splitlines()[-1] == (f"gpt-train: error: init_from {final}: refused pytorch_model.bin: pickle "
                                            "weights are never loaded, only safetensors ones; use a folder holding "
                                            "model.safetensors")
    assert "weights_only" not in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "out" / "checkpoints").exists()


HOLD_LOCK = """
import sys, time
from cli_guard import FolderLock
FolderLock(sys.argv[1], "output_dir").acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_init_from_a_checkpoint_without_its_weights_says_so(run, data, tmp_path, refused):
    checkpoint = run / "checkpoints" / "step_0000004"
    (checkpoint / "model.safetensors").unlink()
    line = refused(train_accelerate.main, argv(data, tmp_path / "out", "--init_from", str(checkpoint)))
    assert line == (f"gpt-train: error: init_from='{checkpoint}': the checkpoint has no model.safetensors; use another "
                    "checkpoint of the run or its final/")


def test_a_second_run_into_a_locked_output_dir_is_refused_with_the_holders_pid(run, data, refused, tree_digest):
    before = tree_digest(run)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = refused(train_accelerate.main, argv(data, run, "--resume_from_checkpoint", "latest", "--max_steps", "6",
                                        "--allow_config_change"))
        assert line == (f"gpt-train: error: {run} is in use by another run (pid {holder.pid}); wait for it to end or "
                        "choose another output_dir")
        assert tree_digest(run) == before
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with its holder
        holder.wait()
    train_accelerate.main(argv(data, run, "--resume_from_checkpoint", "latest", "--max_steps", "6",
                                        "--allow_config_change"))
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("make", ["symlink", "folder"])
def test_a_lock_file_that_is_not_a_plain_file_is_refused_and_nothing_outside_is_written(run, data, tmp_path, refused,
                                                                                      tree_digest, make):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (run / ".lock").unlink()
    if make == "symlink":
        (run / ".lock").symlink_to(victim)
    else:
        (run / ".lock").mkdir()
    before = tree_digest(run)
    line = refused(train_accelerate.main, argv(data, run, "--resume_from_checkpoint", "latest", "--max_steps", "6",
                                               "--allow_config_change"))
    kind = "a symbolic link" if make == "symlink" else "not a plain file"
    assert line == (f"gpt-train: error: {run / '.lock'} is {kind}: a lock file is opened only as a plain file of its "
                    "folder, never through a link; remove it and run the same command again")
    assert victim.read_text() == "precious\n"
    assert tree_digest(run) == before


def test_final_that_is_a_symbolic_link_is_refused_before_training_and_kept(run, data, tmp_path, refused, tree_digest):
    elsewhere = tmp_path / "elsewhere"
    (run / "final").rename(elsewhere)
    (run / "final").symlink_to(elsewhere)
    before, kept = tree_digest(run), tree_digest(elsewhere)
    line = refused(train_accelerate.main, argv(data, run, "--resume_from_checkpoint", "latest", "--max_steps", "6",
                                               "--allow_config_change"))
    assert line == (f"gpt-train: error: {run / 'final'} is a symbolic link (to {elsewhere}): it is not replaced, nor "
                    "written through; move the link away (what it points to is kept) and run the same command again")
    assert tree_digest(run) == before and tree_digest(elsewhere) == kept
    assert steps_logged(run) == [1, 2, 3, 4]  # refused before the first step


def test_a_linked_old_checkpoint_is_never_pruned_through_and_does_not_block_pruning(run, data, tmp_path, capsys,
                                                                                   tree_digest):
    elsewhere = tmp_path / "elsewhere"
    step2 = run / "checkpoints" / "step_0000002"
    step2.rename(elsewhere)
    step2.symlink_to(elsewhere)
    kept = tree_digest(elsewhere)
    train_accelerate.main(argv(data, run, "--resume_from_checkpoint", "latest", "--max_steps", "8",
                               "--allow_config_change", "--keep_last_k", "1"))
    err = capsys.readouterr().err
    warning = (f"gpt-train: warning: {step2} is a symbolic link (to {elsewhere}): not pruned by keep_last_k, which "
               "deletes only real folders; remove it yourself")
    assert err.count(warning) == 1  # once, not at every save
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000002", "step_0000008"]
    assert step2.is_symlink() and tree_digest(elsewhere) == kept


def test_a_finished_run_without_checkpoints_is_not_replaced_unasked(run, data, refused, tree_digest):
    shutil.rmtree(run / "checkpoints")
    before = tree_digest(run)
    for extra in ([], ["--resume_from_checkpoint", "latest"]):
        line = refused(train_accelerate.main, argv(data, run, *extra))
        assert line == (f"gpt-train: error: {run} holds an earlier run (final, metrics.jsonl) and no checkpoint to "
                        "resume from; pass --overwrite_output_dir to replace it, or choose another output_dir")
        assert tree_digest(run) == before
    train_accelerate.main(argv(data, run, "--overwrite_output_dir", "--max_steps", "2"))
    assert steps_logged(run) == [1, 2]


@pytest.mark.parametrize("damaged", ["random_states_0.pkl", "model.safetensors", "optimizer.bin", "trainer_state.json"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(run, data, capsys, refused, damaged):
    step4 = run / "checkpoints" / "step_0000004"
    file = step4 / damaged
    file.write_bytes(file.read_bytes()[:100])  # a damaged RNG file accelerate's load_state would swallow, dropout changing
    line = refused(train_accelerate.main, argv(data, run, "--resume_from_checkpoint", str(step4)), code=1)
    assert line.startswith(f"gpt-train: error: checkpoint {step4} is damaged (")
    assert line.endswith("resume from an earlier one")
    train_accelerate.main(argv(data, run, "--resume_from_checkpoint", "latest", "--max_steps", "6",
                               "--allow_config_change"))
    err = capsys.readouterr().err
    assert f"gpt-train: warning: checkpoint {step4} is damaged (" in err and "falling back to the previous one" in err
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]  # steps 3 and 4 were redone from step 2


@pytest.mark.parametrize("deleted", ["optimizer.bin", "model.safetensors", "random_states_0.pkl"])
def test_a_file_missing_from_the_newest_checkpoint_is_damage_and_the_previous_one_is_used(run, data, capsys, refused,
                                                                                         deleted):
    step4 = run / "checkpoints" / "step_0000004"
    (step4 / deleted).unlink()
    damage = f"checkpoint {step4} is damaged (UserError: {deleted}: saved with the checkpoint, now missing)"
    line = refused(train_accelerate.main, argv(data, run, "--resume_from_checkpoint", str(step4)), code=1)
    assert line == f"gpt-train: error: {damage}; resume from an earlier one"
    train_accelerate.main(argv(data, run, "--resume_from_checkpoint", "latest", "--max_steps", "6",
                               "--allow_config_change"))
    err = capsys.readouterr().err
    assert f"gpt-train: warning: {damage}; falling back to the previous one" in err
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]  # steps 3 and 4 were redone from step 2


def test_resume_refuses_another_data_set_and_max_steps_below_the_checkpoint(run, data, tmp_path, refused, tree_digest):
    """The checks themselves are issue 12's (config_changes, check_resume); these are the cases issue 11 found."""
    before = tree_digest(run)
    step4 = run / "checkpoints" / "step_0000004"
    line = refused(train_accelerate.main, argv(data, run, "--resume_from_checkpoint", "latest", "--max_steps", "3"))
    assert line == (f"gpt-train: error: max_steps=3 is below step 4 of the checkpoint {step4}: nothing to train; "
                    "pass max_steps >= 4")
    other = tmp_path / "other"
    tokenize_fineweb.main(["--data-files", str(data / "docs.jsonl"), "--output", str(other), "--train-tokenizer",
                           "--vocab-size", "300", "--tokenizer-train-docs", "50", "--shard-size", "3000",
                           "--val-tokens", "1000", "--workers", "1"])
    line = refused(train_accelerate.main, argv(data, run, "--resume_from_checkpoint", "latest", "--data_dir", str(other)))
    assert line.startswith(f"gpt-train: error: resuming {step4} would silently change data set: checkpoint ")
    assert str(other) in line and "--allow_config_change" in line
    assert tree_digest(run) == before


SHAPE_REFUSAL = ("gpt-train: error: resuming {} would change which weights it holds or their shapes: {}. These settings "
                 "cannot change on resume, even with --allow_config_change: resume with the checkpoint's values, or "
                 "start a new run in another output_dir")


@pytest.mark.parametrize("extra, listed", [
    (["--n_embd", "128"], "n_embd: checkpoint 64, now 128; n_inner: checkpoint 256, now 512"),  # n_inner follows n_embd
    (["--n_layer", "3"], "n_layer: checkpoint 2, now 3"),
    (["--n_positions", "128"], "n_positions: checkpoint 256, now 128"),  # learned positions: wpe's shape
    (["--qk_norm", "true"], "qk_norm: checkpoint False, now True"),
    (["--tie_word_embeddings", "false"], "tie_word_embeddings: checkpoint True, now False"),  # lm_head.weight appears
])
def test_a_resume_that_changes_a_weights_shape_is_refused_even_when_changes_are_allowed(run, data, refused, tree_digest,
                                                                                        extra, listed):
    before = tree_digest(run)
    line = refused(train_accelerate.main, argv(data, run, "--resume_from_checkpoint", "latest", "--max_steps", "6",
                                               "--allow_config_change", *extra))
    assert line == SHAPE_REFUSAL.format(run / "checkpoints" / "step_0000004", listed)
    assert tree_digest(run) == before


def test_a_resume_onto_a_data_set_with_another_vocabulary_is_refused_naming_vocab_size(run, data, tmp_path, refused,
                                                                                     tree_digest):
    other = tmp_path / "other"
    tokenize_fineweb.main(["--data-files", str(data / "docs.jsonl"), "--output", str(other), "--train-tokenizer",
                           "--vocab-size", "400", "--tokenizer-train-docs", "50", "--shard-size", "4000",
                           "--val-tokens", "1000", "--workers", "1"])
    vocab = json.loads((other / "manifest.json").read_text())["vocab_size"]
    before = tree_digest(run)
    line = refused(train_accelerate.main, argv(data, run, "--resume_from_checkpoint", "latest", "--max_steps", "6",
                                               "--allow_config_change", "--data_dir", str(other)))
    assert line.startswith(f"gpt-train: error: resuming {run / 'checkpoints' / 'step_0000004'} would change which weights "
                           f"it holds or their shapes: vocab_size: checkpoint 300, now {vocab} (vocab_size is the data "
                           "set's tokenizer's). These settings cannot change on resume")
    assert tree_digest(run) == before


@pytest.mark.parametrize("crafted", ["pytorch_model_fsdp_0/.metadata", "optimizer.bin", "random_states_0.pkl",
                                     "scaler.pt"])
def test_a_crafted_pickle_in_a_checkpoint_is_refused_and_never_run(run, data, tmp_path, refused, crafted, runs_code):
    step4 = run / "checkpoints" / "step_0000004"
    marker = tmp_path / "code-ran"
    file = step4 / crafted
    file.parent.mkdir(exist_ok=True)
    if crafted.endswith(".metadata"):
        file.write_bytes(pickle.dumps(runs_code(marker)))  # torch.distributed.checkpoint's format: a plain pickle
    else:
        torch.save({"state": runs_code(marker)}, file)  # torch.save's format, as accelerate writes these
    line = refused(train_accelerate.main, argv(data, run, "--resume_from_checkpoint", str(step4)), code=1)
    assert line.startswith(f"gpt-train: error: checkpoint {step4} is damaged (UserError: refused {file}: ")
    assert "posix.mkdir" in line
    assert not marker.exists()


METRICS_FIX = ("each line must be a JSON object with an integer step, as gpt-train writes them; repair or remove that "
               "line")


@pytest.mark.parametrize("line, problem", [
    (b"42\n", "is not a JSON object (42)"),
    (b'{"step": "5"}\n', "has step='5', not an integer"),
    (b"{not json\n", "is not valid JSON (Expecting property name enclosed in double quotes)"),
    (b'\xff{"step": 5}\n', "is not UTF-8 text (byte 1)"),
])
def test_a_metrics_line_that_is_not_a_record_is_refused_on_resume_naming_file_and_line(run, data, refused, tree_digest,
                                                                                       line, problem):
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(line)
    before = tree_digest(run)
    refusal = refused(train_accelerate.main, argv(data, run, "--resume_from_checkpoint", "latest", "--max_steps", "6",
                                                  "--allow_config_change"))
    assert refusal == f"gpt-train: error: {run / 'metrics.jsonl'} line 5 {problem}: {METRICS_FIX}"
    assert tree_digest(run) == before


def test_a_torn_last_metrics_line_is_dropped_on_resume(run, data):
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a run killed mid-append
    train_accelerate.main(argv(data, run, "--resume_from_checkpoint", "latest", "--max_steps", "6",
                               "--allow_config_change"))
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("field, value, expected", [
    ("step", "4", "an integer >= 0"),
    ("world_size", 0, "an integer >= 1"),
    ("config", [1], "a JSON object"),
    ("train_loader.position", -3, "an integer >= 0"),  # the loader's saved position in the data
    ("train_loader.batch_size", 2.5, "an integer >= 1"),
    ("data.sha256", None, "a string"),
])
def test_a_trainer_state_field_of_another_type_is_damage_naming_file_field_and_type(run, data, capsys, refused,
                                                                                   field, value, expected):
    """Named explicitly the checkpoint is refused; as the newest one it is damage, and the previous one is used."""
    step4 = run / "checkpoints" / "step_0000004"
    state = json.loads((step4 / "trainer_state.json").read_text())
    outer, _, inner = field.partition(".")
    (state[outer] if inner else state)[inner or outer] = value
    (step4 / "trainer_state.json").write_text(json.dumps(state))
    problem = f"{step4 / 'trainer_state.json'}: {field}={json.dumps(value)} is not {expected}, as the trainer writes it"
    line = refused(train_accelerate.main, argv(data, run, "--resume_from_checkpoint", str(step4)), code=1)
    assert line == f"gpt-train: error: checkpoint {step4} is damaged (UserError: {problem}); resume from an earlier one"
    train_accelerate.main(argv(data, run, "--resume_from_checkpoint", "latest", "--max_steps", "6",
                               "--allow_config_change"))
    assert f"gpt-train: warning: checkpoint {step4} is damaged (UserError: {problem}); falling back" in capsys.readouterr().err
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]


def test_what_the_first_evaluation_needs_is_checked_before_the_first_step(data, tmp_path, refused):
    out = tmp_path / "out"
    line = refused(train_accelerate.main, argv(data, out, "--eval_interval", "2", "--val_batches", "1000"))
    assert line == ("gpt-train: error: val_batches=1000 but the val split holds 15 batches of micro_batch_size x "
                    "seq_len = 2 x 32; use val_batches <= 15 (or 0 for no validation loss)")
    line = refused(train_accelerate.main, argv(data, out, "--eval_interval", "2", "--val_batches", "2", "--hellaswag",
                                "--hellaswag_data_dir", str(tmp_path)))
    assert line.startswith(f"gpt-train: error: hellaswag: expected {tmp_path / 'hellaswag' / 'hellaswag_val.jsonl'}")
    # no step ran, no metrics, no checkpoint: only the lock and the record of the verified shards
    assert sorted(p.name for p in out.iterdir()) == [".lock", "data-verified"]


def test_a_recipe_that_is_not_yaml_is_one_line(data, tmp_path, refused):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_preset: tiny\nmax_steps: [4\n")
    line = refused(train_accelerate.main, argv(data, tmp_path / "out", "--config", str(recipe)))
    assert line.startswith(f"gpt-train: error: {recipe} is not valid YAML: ")


def test_a_damaged_manifest_is_one_line(data, tmp_path, refused):
    shards = tmp_path / "shards"
    shutil.copytree(data / "shards", shards)
    (shards / "manifest.json").write_text("{}")
    line = refused(train_accelerate.main, argv(data, tmp_path / "out", "--data_dir", str(shards)))
    assert line == (f"gpt-train: error: {shards / 'manifest.json'} is not a gpt-tokenize manifest (missing or malformed: "
                    "vocab_size, eot_id, tokenizer, shards): tokenize again into an empty folder")


def test_a_damaged_tokenizer_of_the_data_names_the_file(data, tmp_path, refused):
    shards = tmp_path / "shards"
    shutil.copytree(data / "shards", shards)
    (shards / "tokenizer" / "tokenizer.json").write_text("not json {")
    line = refused(train_accelerate.main, argv(data, tmp_path / "out", "--data_dir", str(shards)))
    assert line == (f"gpt-train: error: {shards / 'tokenizer'}: tokenizer.json is not valid JSON (Expecting value: line 1 "
                    "column 1 (char 0)): tokenize again into an empty folder")


def test_a_full_disk_during_a_checkpoint_says_how_to_resume(data, tmp_path, monkeypatch, refused):
    from accelerate import Accelerator

    out = tmp_path / "out"
    save_state = Accelerator.save_state

    def fail_at_step_4(self, output_dir=None, **kwargs):
        if output_dir.endswith("step_0000004"):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 6784 vs 6676")
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", fail_at_step_4)
    line = refused(train_accelerate.main, argv(data, out), code=1)
    step2 = out / "checkpoints" / "step_0000002"
    assert line == (f"gpt-train: error: could not write checkpoint {out / 'checkpoints' / '.tmp-step_0000004'} "
                    "([enforce fail at inline_container.cc:664] . unexpected pos 6784 vs 6676); is the disk full? "
                    f"Free space, then run the same command with --resume_from_checkpoint latest to continue from "
                    f"{step2} (step 2)")
    assert not (out / "final").exists()
    monkeypatch.undo()
    train_accelerate.main(argv(data, out, "--resume_from_checkpoint", "latest"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002", "step_0000004"]


def test_a_full_disk_during_the_export_keeps_the_checkpoints_and_the_same_command_exports(data, tmp_path, monkeypatch,
                                                                                         refused, tree_digest):
    import errno

    from modeling_gpt import GPTForCausalLM

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "out"
    monkeypatch.setattr(GPTForCausalLM, "save_pretrained", no_space)
    line = refused(train_accelerate.main, argv(data, out), code=1)
    assert line == (f"gpt-train: error: could not write {out / 'final'} ([Errno 28] No space left on device); is the disk "
                    "full? Free space, then run the same command with --resume_from_checkpoint latest: it exports "
                    "final/ from the last checkpoint")
    assert not (out / "final").exists() and not list(out.glob(".*final*"))
    checkpoints = tree_digest(out / "checkpoints")
    monkeypatch.undo()
    train_accelerate.main(argv(data, out, "--resume_from_checkpoint", "latest"))
    assert (out / "final" / "model.safetensors").is_file()
    assert tree_digest(out / "checkpoints") == checkpoints


def test_final_carries_its_own_record_and_gpt_push_reads_it_not_the_newest_checkpoint(run, data, tmp_path, monkeypatch,
                                                                                        refused):
    """A resume to step 6 whose export fails: final/ still holds step 4's weights, the newest checkpoint is step 6,
    and the card says 4."""
    import errno

    import push_to_hub
    from modeling_gpt import GPTForCausalLM

    record = json.loads((run / "final" / "training_record.json").read_text())
    assert (record["step"], record["tokens"], record["total_batch_tokens"]) == (4, 256, 64)

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(GPTForCausalLM, "save_pretrained", no_space)
    refused(train_accelerate.main, argv(data, run, "--resume_from_checkpoint", "latest", "--max_steps", "6",
                                        "--allow_config_change"), code=1)
    monkeypatch.undo()
    assert train_accelerate.CheckpointManager(run / "checkpoints").latest().name == "step_0000006"
    push_to_hub.main(["--checkpoint", str(run / "final"), "--repo-id", "me/tiny", "--dry-run", "--prompts",
                      "--output-dir", str(tmp_path / "hub")])
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "| Optimizer steps | 4 |" in card and "| Tokens seen | 256 (256) |" in card


def test_a_verified_shard_altered_with_its_mtime_restored_is_caught_on_resume(data, tmp_path, refused):
    shards = tmp_path / "shards"
    shutil.copytree(data / "shards", shards)
    out = tmp_path / "out"
    train_accelerate.main(argv(data, out, "--data_dir", str(shards), "--max_steps", "2"))  # verified and recorded
    manifest = json.loads((shards / "manifest.json").read_text())
    shard = shards / next(s["file"] for s in manifest["shards"] if s["split"] == "train")
    before = os.stat(shard)
    with open(shard, "r+b") as f:  # one byte, in place: same size, same inode
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(shard).st_mtime_ns == before.st_mtime_ns
    line = refused(train_accelerate.main, argv(data, out, "--data_dir", str(shards), "--max_steps", "4",
                                               "--resume_from_checkpoint", "latest", "--allow_config_change"))
    assert line.startswith(f"gpt-train: error: shard {shard} is corrupt: sha256 ")
    assert line.endswith(f"does not match {next(s['sha256'] for s in manifest['shards'] if s['file'] == shard.name)} in "
                         f"{shards / 'manifest.json'}")


def test_weights_that_turn_non_finite_are_never_saved(tmp_path):
    from accelerate import Accelerator

    model = torch.nn.Linear(4, 4)
    with torch.no_grad():
        model.weight[1, 2] = float("inf")
    checkpoints = train_accelerate.CheckpointManager(tmp_path / "checkpoints")
    run = SimpleNamespace(model=model, accelerator=Accelerator(cpu=True), checkpoints=checkpoints, last_good=None)
    with pytest.raises(train_accelerate.NonFiniteLossError, match=r"the weights hold NaN or inf after step 7 \(weight\); "
                       "nothing was saved from them.*no checkpoint was saved yet"):
        train_accelerate.maybe_save(SimpleNamespace(**vars(run), args=SimpleNamespace(save_interval=7, max_steps=9)), 7)
    assert not checkpoints.root.exists()


def test_debug_shows_the_traceback(data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_accelerate.main(argv(data, tmp_path / "out", "--learning_rate", "inf", "--debug"))
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("gpt-train: error: ")


@pytest.mark.slow
def test_ctrl_c_names_the_step_and_the_checkpoint_and_the_same_command_resumes(data, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "train_accelerate.py"), *argv(data, out, "--max_steps", "100000",
                                                                        "--resume_from_checkpoint", "latest")]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_as_on_a_terminal)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "checkpoints" / "step_0000004").is_dir():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    latest = train_accelerate.CheckpointManager(out / "checkpoints").latest()
    assert line.startswith("gpt-train: error: interrupted (Ctrl-C) during step ")
    assert line.endswith(f"of 100000; run the same command with --resume_from_checkpoint latest to continue from {latest} "
                         f"(step {int(latest.name[5:])})")
    result = subprocess.run([*command[:-4], "--max_steps", str(int(latest.name[5:]) + 2), "--resume_from_checkpoint",
                             "latest", "--allow_config_change"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_under_accelerate_launch_the_error_is_reported_once(data, tmp_path):
    """Two processes (DDP over gloo) fail on the same setting: one line from rank 0, no traceback of ours from either.
    (The launcher's own ChildFailedError summary follows it; that is torch's, not the trainer's.)"""
    command = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "train_accelerate.py"),
               *argv(data, tmp_path / "out", "--total_batch_tokens", "128", "--eval_interval", "2", "--val_batches", "1000")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("gpt-train: error:")]
    assert errors == ["gpt-train: error: val_batches=1000 but the val split holds 15 batches of micro_batch_size x "
                      "seq_len = 2 x 32; use val_batches <= 15 (or 0 for no validation loss)"]
    assert 'train_accelerate.py", line' not in result.stderr


@pytest.mark.parametrize("rank, failure, code, expected", [
    ("0", "broken collective", 1,
     "gpt-train: error: another process of this run stopped first; GPT_DEBUG=1 shows every traceback"),
    ("1", "broken collective", 0, ""),  # the process that failed first reports; the others leave quietly
    ("1", "bad setting", 0, ""),  # every process sees the same bad setting: rank 0 says it once
])
def test_only_rank_0_speaks_for_a_multi_process_run(monkeypatch, capsys, rank, failure, code, expected):
    import torch.distributed

    from cli_guard import run_cli

    def fail(argv):
        if failure == "bad setting":
            raise train_accelerate.ConfigError("val_batches=1000 ...")
        raise torch.distributed.DistBackendError("[gloo] Connection closed by peer")

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as info:
        run_cli("gpt-train", fail, [])
    assert info.value.code == code
    assert capsys.readouterr().err.strip() == expected
