"""gpt-push on hostile input: nothing from a file runs, nothing of the user's is deleted or uploaded unasked,
and every refusal is one line `gpt-push: error: ...` with a non-zero exit and no traceback."""

import json
import pickle
import shutil

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import push_to_hub
from modeling_gpt import GPTConfig, GPTForCausalLM

TEXTS = ["The cat sat on the mat.", "Energy is the capacity to do work.", "Rivers carry water to the sea."]


def small_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXTS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A run folder as the trainer leaves it: final/, one checkpoint (trainer_state.json + model.safetensors),
    metrics.jsonl and a plot."""
    root = tmp_path_factory.mktemp("template") / "run"
    tokenizer = small_tokenizer()
    eot = tokenizer.eos_token_id
    config = GPTConfig.from_preset("tiny", vocab_size=len(tokenizer), bos_token_id=eot, eos_token_id=eot, n_positions=64)
    torch.manual_seed(0)
    model = GPTForCausalLM(config)
    model.save_pretrained(root / "final")
    tokenizer.save_pretrained(root / "final")
    step = root / "checkpoints" / "step_0000004"
    step.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}, step / "model.safetensors")
    (step / "trainer_state.json").write_text(json.dumps({"step": 4, "tokens": 1024, "model_config": config.to_dict()}))
    (root / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 5.0 / s}) + "\n" for s in range(1, 5)))
    (root / "loss.png").write_bytes(b"\x89PNG\r\n\x1a\n a plot")
    return root


@pytest.fixture
def run(template, tmp_path):
    """A fresh copy of the run folder for each test (tests damage it on purpose)."""
    shutil.copytree(template, tmp_path / "run")
    return tmp_path / "run"






def push(checkpoint, *extra):
    return ["--checkpoint", str(checkpoint), "--repo-id", "me/tiny", "--dry-run", "--prompts", *extra]


def test_crafted_fsdp_metadata_is_refused_and_never_run(run, tmp_path, refused, runs_code):
    step = run / "checkpoints" / "step_0000004"
    (step / "model.safetensors").unlink()
    (step / "pytorch_model_fsdp_0").mkdir()
    marker = tmp_path / "code-ran"
    (step / "pytorch_model_fsdp_0" / ".metadata").write_bytes(pickle.dumps(runs_code(marker)))
    line = refused(push_to_hub.main, push(step))
    assert f"refused {step / 'pytorch_model_fsdp_0' / '.metadata'}" in line and "posix.mkdir" in line
    assert not marker.exists()


def test_crafted_fsdp_full_state_dict_is_refused_and_never_run(run, tmp_path, refused, runs_code):
    step = run / "checkpoints" / "step_0000004"
    (step / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({"transformer.wte.weight": runs_code(marker)}, step / "pytorch_model_fsdp.bin")
    line = refused(push_to_hub.main, push(step))
    assert line == (f"gpt-push: error: refused {step / 'pytorch_model_fsdp.bin'}: Trying to load unsupported GLOBAL "
                    "posix.mkdir whose module posix is blocked.; only weights and plain data are loaded from a checkpoint")
    assert not marker.exists()


def test_overwrite_never_deletes_the_run_that_holds_the_input(run, refused, tree_digest):
    before = tree_digest(run)
    line = refused(push_to_hub.main, push(run / "checkpoints" / "step_0000004", "--output-dir", str(run), "--overwrite"))
    assert line == (f"gpt-push: error: --output-dir '{run}' holds the checkpoint being published; --overwrite would "
                    "delete it: choose another --output-dir")
    assert tree_digest(run) == before
    refused(push_to_hub.main, push(run / "final", "--output-dir", str(run / "final"), "--overwrite"))
    assert tree_digest(run) == before


def test_overwrite_never_deletes_a_folder_gpt_push_did_not_write(run, template, tmp_path, refused, tree_digest):
    other = tmp_path / "other-run"
    shutil.copytree(template, other)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text("{}")
    thesis = tmp_path / "d"
    (thesis / "figs").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("x\n")
    clone = tmp_path / "clone"
    (clone / ".git" / "objects").mkdir(parents=True)
    (clone / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (clone / "train.py").write_text("print('mine')\n")
    for folder in (other, shards, thesis, clone):
        before = tree_digest(folder)
        line = refused(push_to_hub.main, push(run / "final", "--output-dir", str(folder), "--overwrite"))
        assert line == (f"gpt-push: error: --output-dir '{folder}' is not a gpt-push export (it has no "
                        ".gpt-push-export.json); --overwrite replaces only a folder gpt-push wrote: choose another "
                        "--output-dir")
        assert tree_digest(folder) == before
    assert (thesis / "figs").is_dir() and (clone / ".git" / "objects").is_dir()


def test_overwrite_replaces_an_earlier_export(run, tmp_path):
    out = tmp_path / "hub"
    push_to_hub.main(push(run / "final", "--output-dir", str(out)))
    assert (out / "plots" / "loss.png").is_file()
    (run / "loss.png").unlink()  # what the earlier export had and this one has not goes with it
    push_to_hub.main(push(run / "final", "--output-dir", str(out), "--overwrite"))
    assert not (out / "plots").exists() and (out / "model.safetensors").is_file()
    assert "plots/loss.png" not in json.loads((out / ".gpt-push-export.json").read_text())["files"]


def test_overwrite_never_deletes_a_users_file_put_into_an_export(run, tmp_path, refused, tree_digest):
    out = tmp_path / "hub"
    push_to_hub.main(push(run / "final", "--output-dir", str(out)))
    (out / "notes.txt").write_text("mine")
    before = tree_digest(out)
    line = refused(push_to_hub.main, push(run / "final", "--output-dir", str(out), "--overwrite"))
    assert line == (f"gpt-push: error: --output-dir '{out}' holds files gpt-push did not write (notes.txt); --overwrite "
                    "deletes only what gpt-push made: move them away or choose another --output-dir")
    assert tree_digest(out) == before


def test_a_users_out_tmp_beside_the_output_survives(run, tmp_path, tree_digest):
    keep = tmp_path / "OUT.tmp"
    keep.mkdir()
    (keep / "keep.txt").write_text("x\n")
    before = tree_digest(keep)
    push_to_hub.main(push(run / "final", "--output-dir", str(tmp_path / "OUT")))
    assert tree_digest(keep) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("OUT", ".OUT"))) == ["OUT", "OUT.tmp"]


def test_symlinks_in_the_run_folder_are_not_followed_into_the_upload(run, tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "id_rsa.png").write_bytes(b"PRIVATE KEY")
    (secret / "results.json").write_text(json.dumps({"results": {"hellaswag": {"acc": 0.99, "n": 1}}, "model": "x"}))
    (run / "stolen.png").symlink_to(secret / "id_rsa.png")
    (run / "eval_results.json").symlink_to(secret / "results.json")
    (run / "plots").symlink_to(secret)
    out = tmp_path / "hub"
    push_to_hub.main(push(run / "final", "--output-dir", str(out)))
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["loss.png"]
    assert not any(b"PRIVATE KEY" in p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert "0.99" not in (out / "README.md").read_text()


def test_the_card_describes_the_exported_weights_not_the_newest_checkpoint(run, tmp_path):
    """final/ was exported at step 4; the run went on (or was interrupted exporting step 6): the card says step 4."""
    (run / "final" / "training_record.json").write_text(json.dumps({"step": 4, "tokens": 1024}))
    newer = run / "checkpoints" / "step_0000006"
    shutil.copytree(run / "checkpoints" / "step_0000004", newer)
    (newer / "trainer_state.json").write_text(json.dumps({"step": 6, "tokens": 1536, "elapsed_seconds": 7200}))
    with open(run / "metrics.jsonl", "a") as f:
        f.write("".join(json.dumps({"step": s, "loss": 5.0 / s, "tokens": 256 * s}) + "\n" for s in (5, 6)))
    out = tmp_path / "hub"
    push_to_hub.main(push(run / "final", "--output-dir", str(out)))
    card = (out / "README.md").read_text()
    assert "| Optimizer steps | 4 |" in card and "| Tokens seen | 1,024 (1.02K) |" in card
    assert "| Final training loss | 1.2500 |" in card  # metrics.jsonl's row of step 4
    assert "Training time" not in card  # step 6's elapsed time is not these weights'


def test_without_the_trainers_record_the_card_claims_no_run_facts(run, tmp_path):
    out = tmp_path / "hub"
    push_to_hub.main(push(run / "final", "--output-dir", str(out)))
    card = (out / "README.md").read_text()
    assert "Optimizer steps" not in card and "Tokens seen" not in card and "| Hardware | not recorded |" in card


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_full_disk_during_the_export_is_one_line_and_leaves_nothing_half_written(run, tmp_path, monkeypatch, refused,
                                                                                   tree_digest, overwrite):
    import transformers.modeling_utils
    from safetensors import SafetensorError

    out = tmp_path / "exports" / "hub"
    if overwrite:  # an earlier export stays whole
        push_to_hub.main(push(run / "final", "--output-dir", str(out)))
    before = tree_digest(tmp_path / "exports") if overwrite else {}

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    line = refused(push_to_hub.main, push(run / "final", "--output-dir", str(out), *(["--overwrite"] if overwrite else [])),
                   code=1)
    assert line == (f"gpt-push: error: could not write {out} (Error while serializing: I/O error: No space left on device "
                    "(os error 28)); is the disk full? Free space, then run the same command again")
    if overwrite:
        assert tree_digest(tmp_path / "exports") == before
        assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["hub"]
    else:
        assert not (tmp_path / "exports").exists() or not any((tmp_path / "exports").iterdir())


def test_non_finite_weights_are_not_exported(run, tmp_path, refused):
    from safetensors.torch import load_file, save_file

    weights = load_file(run / "final" / "model.safetensors")
    name = sorted(weights)[0]
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, run / "final" / "model.safetensors", metadata={"format": "pt"})
    line = refused(push_to_hub.main, push(run / "final", "--output-dir", str(tmp_path / "hub")))
    assert "refusing to export: 1 weight tensor(s) hold NaN or inf (e.g. " in line
    assert not (tmp_path / "hub").exists()


MISFIT = ("the weights do not fit the model ({}): a missing tensor would be left random and an unexpected one dropped, "
          "so nothing is loaded; use the whole checkpoint the model was saved with")


def drop_tensor(folder, name="transformer.h.0.attn.c_attn.weight", extra=None):
    """Remove one tensor from folder/model.safetensors (and add `extra`), as a damaged or foreign file would."""
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    del weights[name]
    if extra:
        weights[extra] = torch.zeros(3)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("kind", ["final", "checkpoint"])
def test_a_missing_or_unexpected_tensor_is_refused_naming_it(run, tmp_path, refused, kind):
    folder = run / "final" if kind == "final" else run / "checkpoints" / "step_0000004"
    drop_tensor(folder, extra="transformer.h.9.extra")
    line = refused(push_to_hub.main, push(folder, "--output-dir", str(tmp_path / "hub")))
    what = f"--checkpoint {folder}" + ("" if kind == "final" else " (config from trainer_state.json)")
    assert line == f"gpt-push: error: {what}: " + MISFIT.format(
        "missing transformer.h.0.attn.c_attn.weight; unexpected transformer.h.9.extra")
    assert not (tmp_path / "hub").exists()


def test_pickle_weights_are_refused_without_advice_to_unpickle_them(run, tmp_path, refused, runs_code):
    final = run / "final"
    (final / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({"transformer.wte.weight": runs_code(marker)}, final / "pytorch_model.bin")
    line = refused(push_to_hub.main, push(final, "--output-dir", str(tmp_path / "hub")))
    assert line == (f"gpt-push: error: --checkpoint {final}: refused pytorch_model.bin: pickle weights are never loaded, "
                    "only safetensors ones; use a folder holding model.safetensors")
    assert not marker.exists() and not (tmp_path / "hub").exists()


@pytest.mark.parametrize("damage, message", [
    ("truncated_weights", "model.safetensors"),
    ("bad_trainer_state", "trainer_state.json is not valid JSON"),
    ("bad_metrics", "metrics.jsonl line 6 is not valid JSON"),
    ("missing_folder", "is not a folder"),
    ("no_tokenizer", "no tokenizer found for"),
])
def test_damaged_input_is_one_line(run, damage, message, refused):
    step = run / "checkpoints" / "step_0000004"
    if damage == "truncated_weights":
        data = (step / "model.safetensors").read_bytes()
        (step / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "bad_trainer_state":
        (step / "trainer_state.json").write_text('{"step": 4,')
    elif damage == "bad_metrics":
        with open(run / "metrics.jsonl", "a") as f:
            f.write("\n{not json\n")
    elif damage == "missing_folder":
        shutil.rmtree(step)
    else:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (run / "final" / name).unlink()
    line = refused(push_to_hub.main, push(step))
    assert message in line


@pytest.mark.parametrize("line, problem", [
    (b"[1, 2]\n", "is not a JSON object ([1, 2])"),
    (b'{"loss": 2.0}\n', "has step=None, not an integer"),
    (b'\xff{"step": 5}\n', "is not UTF-8 text (byte 1)"),
])
def test_a_metrics_line_that_is_not_a_record_is_refused_naming_file_and_line(run, tmp_path, refused, line, problem):
    """The trainer's reader (run_records.MetricsLog) is gpt-push's: the same refusal, the same words."""
    (run / "final" / "training_record.json").write_text(json.dumps({"step": 4, "tokens": 1024}))
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(line)
    refusal = refused(push_to_hub.main, push(run / "final", "--output-dir", str(tmp_path / "hub")))
    assert refusal == (f"gpt-push: error: {run / 'metrics.jsonl'} line 5 {problem}: each line must be a JSON object "
                       "with an integer step, as gpt-train writes them; repair or remove that line")
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize("record", ["trainer_state.json", "training_record.json"])
def test_a_run_record_field_of_another_type_is_refused_naming_file_field_and_type(run, tmp_path, refused, record):
    """The trainer's reader of its records (run_records.read_run_record) is gpt-push's."""
    folder = run / "checkpoints" / "step_0000004" if record == "trainer_state.json" else run / "final"
    state = json.loads((folder / record).read_text()) if (folder / record).is_file() else {}
    (folder / record).write_text(json.dumps({**state, "step": "4"}))
    line = refused(push_to_hub.main, push(folder, "--output-dir", str(tmp_path / "hub")))
    assert line == (f'gpt-push: error: {folder / record}: step="4" is not an integer >= 0, as the trainer writes it')
    assert not (tmp_path / "hub").exists()


def test_a_tokenizer_folder_that_does_not_exist_is_named(run, tmp_path, refused):
    line = refused(push_to_hub.main, push(run / "final", "--tokenizer", str(tmp_path / "nope")))
    assert line == f"gpt-push: error: --tokenizer {tmp_path / 'nope'}: no such folder"


def test_debug_shows_the_traceback(run, capsys, monkeypatch):
    monkeypatch.setenv("GPT_DEBUG", "1")
    with pytest.raises(SystemExit):
        push_to_hub.main(push(run / "nowhere"))
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("gpt-push: error: ")
