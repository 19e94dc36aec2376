"""gpt-eval on hostile input: a model folder missing its weights or tokenizer, shards of another tokenizer,
benchmark files with bad lines or impossible gold answers. Each ends in one line `gpt-eval: error: ...`
(non-zero exit, no traceback) that names the file or value; nothing is scored wrong in silence."""

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from eval.cli import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "gpt2-tokenizer").is_dir(), reason=f"shared data not found at {DATA}")
ITEM = {"ind": 0, "activity_label": "Cooking", "ctx_a": "A man cuts an onion.", "ctx_b": "he", "ctx": "A man cuts an onion. he",
        "split": "val", "label": 1, "endings": ["sings.", "puts it in a pan.", "flies away.", "reads a book."]}




def hellaswag_dir(root: Path, lines: list[str]) -> Path:
    (root / "hellaswag").mkdir(parents=True)
    (root / "hellaswag" / "hellaswag_val.jsonl").write_text("".join(line + "\n" for line in lines))
    return root


def test_model_folder_without_weights_names_the_missing_file(model_dir, tmp_path, refused):
    shutil.copytree(model_dir, tmp_path / "m", ignore=shutil.ignore_patterns("*.safetensors"))
    line = refused(main, ["--model", str(tmp_path / "m"), "--data-dir", str(DATA), "--limit", "1"])
    assert line.startswith(f"gpt-eval: error: --model {tmp_path / 'm'}: none of model.safetensors, "
                           "model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json in it")
    assert "copy model.safetensors into it" in line


def test_damaged_weights_are_named(model_dir, tmp_path, refused):
    shutil.copytree(model_dir, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    line = refused(main, ["--model", str(tmp_path / "m"), "--data-dir", str(DATA), "--limit", "1"])
    assert line.startswith(f"gpt-eval: error: {weights} is damaged (")
    assert line.endswith("copy it again or use another checkpoint")


def test_model_folder_without_tokenizer_says_to_pass_one(model_dir, tmp_path, refused):
    shutil.copytree(model_dir, tmp_path / "m", ignore=shutil.ignore_patterns("tokenizer*", "vocab.json", "merges.txt"))
    line = refused(main, ["--model", str(tmp_path / "m"), "--data-dir", str(DATA), "--limit", "1"])
    assert "it has no tokenizer: pass --tokenizer with the one the model was trained with" in line
    line = refused(main, ["--model", str(tmp_path / "m"), "--tokenizer", str(tmp_path / "nope"), "--limit", "1"])
    assert line == f"gpt-eval: error: --tokenizer {tmp_path / 'nope'}: no such folder; {tmp_path}/ holds: m"


def test_missing_model_unknown_task_bad_device_and_max_length(model_dir, tmp_path, refused):
    line = refused(main, ["--model", str(tmp_path / "nowhere")])
    assert line == f"gpt-eval: error: --model {tmp_path / 'nowhere'}: no such folder; {tmp_path}/ holds no folders"
    line = refused(main, ["--model", str(model_dir), "--tasks", "hellaswag,mmlu", "--data-dir", str(DATA)])
    assert line.startswith("gpt-eval: error: unknown task 'mmlu'; known: hellaswag")
    line = refused(main, ["--model", str(model_dir), "--device", "tpu9"])
    assert line == "gpt-eval: error: --device 'tpu9' is not a device; use cpu, cuda, cuda:1, mps, ..."
    line = refused(main, ["--model", str(model_dir), "--tasks", "lambada", "--data-dir", str(DATA), "--max-length", "100000"])
    assert line == "gpt-eval: error: max_length=100000: the model takes 1..256 tokens"
    line = refused(main, ["--model", str(model_dir), "--tasks", "piqa", "--data-dir", str(tmp_path)])
    assert line.startswith(f"gpt-eval: error: piqa: expected {tmp_path / 'evals' / 'piqa.jsonl'}")


def test_a_mistyped_local_path_is_a_missing_folder_with_the_nearest_ones(tmp_path, monkeypatch, refused):
    for run in ("tiny", "tiny-300"):
        (tmp_path / "out" / run).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert refused(main, ["--model", "out/nope"]) == "gpt-eval: error: --model out/nope: no such folder; out/ holds: tiny, tiny-300"
    line = refused(main, ["--model", "out/tiny-30/final"])
    assert line == "gpt-eval: error: --model out/tiny-30/final: no such folder; out/ holds: tiny-300, tiny"
    assert refused(main, ["--model", "./tiny"]) == "gpt-eval: error: --model ./tiny: no such folder; ./ holds: out"
    assert refused(main, ["--model", "../nope/final"]).startswith("gpt-eval: error: --model ../nope/final: no such folder; ../ holds: ")
    # a Hub id namespace/name stays a Hub id, with out/ beside it too
    line = refused(main, ["--model", "someone/no-such-model"], code=1)
    assert line.startswith("gpt-eval: error: --model 'someone/no-such-model' (not in the local cache) needs the Hugging Face "
                           "Hub, but HF_HUB_OFFLINE=1 is set: pass a local model folder")


@pytest.mark.parametrize("bad, message", [
    ({**ITEM, "label": 4}, "label=4 is not an index into the 4 endings (0..3); such an item cannot be scored"),
    ({**ITEM, "label": -1}, "label=-1 is not an index into the 4 endings"),
    ({**ITEM, "label": "two"}, "label='two' is not an index into the 4 endings"),
    ({k: v for k, v in ITEM.items() if k != "endings"}, "missing field(s) endings"),
    ({**ITEM, "endings": "one string"}, "endings must be a list of at least two strings"),
    ({**ITEM, "ctx_a": None}, ": ctx_a is null, expected a string (a hellaswag line has activity_label, ctx_a, ctx_b, ctx, "
                              "endings, label)"),
    ({**ITEM, "label": [1]}, ": label is a list, expected an index"),
    (None, "line 2 is not valid JSON (Expecting property name enclosed in double quotes)"),
])
def test_bad_benchmark_lines_are_refused_with_file_and_line(model_dir, tmp_path, bad, message, refused):
    data = hellaswag_dir(tmp_path, [json.dumps(ITEM), "{broken" if bad is None else json.dumps(bad)])
    line = refused(main, ["--model", str(model_dir), "--data-dir", str(data)])
    assert line.startswith(f"gpt-eval: error: {data / 'hellaswag' / 'hellaswag_val.jsonl'} line 2")
    assert message in line


def test_a_field_of_the_wrong_type_names_the_file_and_line(model_dir, tmp_path, refused):
    data = hellaswag_dir(tmp_path, [json.dumps(ITEM), json.dumps(ITEM), json.dumps({**ITEM, "ctx_a": None})])
    line = refused(main, ["--model", str(model_dir), "--data-dir", str(data)])
    assert line == (f"gpt-eval: error: {data / 'hellaswag' / 'hellaswag_val.jsonl'} line 3: ctx_a is null, expected a "
                    "string (a hellaswag line has activity_label, ctx_a, ctx_b, ctx, endings, label)")


def test_a_missing_or_unexpected_tensor_is_refused_naming_it(model_dir, tmp_path, refused):
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, tmp_path / "m")
    weights = load_file(tmp_path / "m" / "model.safetensors")
    del weights["transformer.h.0.attn.c_attn.weight"]
    save_file(weights, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    line = refused(main, ["--model", str(tmp_path / "m"), "--data-dir", str(DATA), "--limit", "1"])
    assert line == (f"gpt-eval: error: --model {tmp_path / 'm'}: the weights do not fit the model (missing "
                    "transformer.h.0.attn.c_attn.weight): a missing tensor would be left random and an unexpected one "
                    "dropped, so nothing is loaded; use the whole checkpoint the model was saved with")


def test_pickle_weights_are_refused_without_advice_to_unpickle_them(model_dir, tmp_path, capsys, runs_code):
    import torch

    shutil.copytree(model_dir, tmp_path / "m", ignore=shutil.ignore_patterns("*.safetensors"))
    marker = tmp_path / "code-ran"
    torch.save({"transformer.wte.weight": runs_code(marker)}, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(SystemExit) as info:
        main(["--model", str(tmp_path / "m"), "--data-dir", str(DATA), "--limit", "1"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err == (f"gpt-eval: error: --model {tmp_path / 'm'}: refused pytorch_model.bin: pickle weights are never "
                   "loaded, only safetensors ones; use a folder holding model.safetensors\n")
    assert not marker.exists()


@pytest.mark.parametrize("content, reason", [(b"not json {", "is not valid JSON (Expecting value: line 1 column 1"),
                                             (b'{"a": "\xff"}', "is not UTF-8 text")])
def test_a_tokenizer_file_that_is_not_json_is_named(model_dir, tmp_path, refused, content, reason):
    shutil.copytree(model_dir, tmp_path / "m")
    (tmp_path / "m" / "tokenizer.json").write_bytes(content)
    line = refused(main, ["--model", str(tmp_path / "m"), "--data-dir", str(DATA), "--limit", "1"])
    assert line.startswith(f"gpt-eval: error: the tokenizer {tmp_path / 'm'}: tokenizer.json {reason}")
    assert line.endswith("; save the folder again with save_pretrained")


def test_a_tokenizer_that_cannot_belong_to_the_model_is_refused(model_dir, tmp_path, refused):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(["The cat sat on the mat.", "A man cuts an onion."],
                            trainers.BpeTrainer(vocab_size=273, special_tokens=["<|endoftext|>"], show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    small = tmp_path / "small"
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(small)
    line = refused(main, ["--model", str(model_dir), "--tokenizer", str(small), "--data-dir", str(DATA), "--limit", "1"])
    assert line == (f"gpt-eval: error: the tokenizer {small} has {bpe.get_vocab_size():,} tokens but the model's "
                    "vocabulary 50,257: it cannot be the model's (a model's tokenizer has at most vocab_size tokens and "
                    "at least 90% of them); pass --tokenizer with the tokenizer the model was trained with")


def test_a_full_disk_at_the_output_leaves_nothing_behind(model_dir, tmp_path, monkeypatch, refused):
    import errno

    import evaluate.saving

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    @contextmanager
    def lock_file_that_stays(path):  # as filelock's Unix locks were before 3.12: the file is never deleted
        Path(path).touch()
        yield

    # the write itself fails, after evaluate.save made its lock file beside the results file
    monkeypatch.setattr(evaluate.saving, "FileLock", lock_file_that_stays)
    monkeypatch.setattr(evaluate.saving, "json", SimpleNamespace(dump=no_space))
    out = tmp_path / "results"
    out.mkdir()
    line = refused(main, ["--model", str(model_dir), "--data-dir", str(DATA), "--limit", "1",
                          "--output", str(out / "res.json")], code=1)
    assert line == "gpt-eval: error: No space left on device (disk full): free some space, then run the same command again"
    assert list(out.iterdir()) == []


def write_val_shards(folder: Path, tokenizer_hash: str) -> Path:
    import token_shards

    tokens = np.random.default_rng(0).integers(0, 50257, 3000).astype(np.uint16)
    sha = token_shards.write_shard(folder / "val_000000.bin", tokens)
    (folder / "manifest.json").write_text(json.dumps({
        "vocab_size": 50257, "eot_id": 50256, "tokenizer": {"name": "other", "hash": tokenizer_hash},
        "shards": [{"file": "val_000000.bin", "split": "val", "tokens": 3000, "docs": 1, "sha256": sha}]}))
    return folder


def test_val_shards_of_another_tokenizer_are_refused(model_dir, tmp_path, refused):
    shards = write_val_shards(tmp_path, "f" * 64)
    out = tmp_path / "val.json"
    line = refused(main, ["--model", str(model_dir), "--tasks", "", "--val-data-dir", str(shards), "--seq-len", "32",
                            "--output", str(out)])
    assert line.startswith(f"gpt-eval: error: {shards / 'manifest.json'} was written with tokenizer_hash='fff")
    assert line.endswith("tokenize the data with the model's tokenizer")
    assert not out.exists()


def test_impossible_val_batches_and_unwritable_output(model_dir, tmp_path, refused):
    import token_shards
    from transformers import AutoTokenizer

    shards = write_val_shards(tmp_path, token_shards.tokenizer_hash(AutoTokenizer.from_pretrained(model_dir)))
    base = ["--model", str(model_dir), "--tasks", "", "--val-data-dir", str(shards), "--seq-len", "32", "--batch-size", "2"]
    line = refused(main, [*base, "--val-batches", "1000"])
    assert line == "gpt-eval: error: num_batches=1000; the split holds 1..46 batches of 2x32"
    (tmp_path / "file").write_text("a file, not a folder")
    line = refused(main, [*base, "--val-batches", "1", "--output", str(tmp_path / "file" / "r.json")], code=1)
    assert line == f"gpt-eval: error: File exists: {tmp_path / 'file'}"


def test_output_never_replaces_a_file_that_is_not_a_results_file(model_dir, tmp_path, refused):
    shutil.copytree(model_dir, tmp_path / "m")
    config = (tmp_path / "m" / "config.json").read_bytes()
    line = refused(main, ["--model", str(tmp_path / "m"), "--data-dir", str(DATA), "--limit", "1",
                          "--output", str(tmp_path / "m" / "config.json")])
    assert line == f"gpt-eval: error: --output {tmp_path / 'm' / 'config.json'} exists and is not a gpt-eval results file; choose another path"
    assert (tmp_path / "m" / "config.json").read_bytes() == config


def test_plot_of_a_damaged_metrics_file_names_the_line(tmp_path, refused):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0, "tokens": 64}\n{"step": 2, "lo\n')
    line = refused(main, ["plot", str(tmp_path / "run"), "--output", str(tmp_path / "plots")])
    assert line == (f"gpt-eval: error: {tmp_path / 'run' / 'metrics.jsonl'} line 2 is not valid JSON (Invalid "
                    "control character at): repair or remove that line")
    assert not (tmp_path / "plots").exists()


def test_plot_of_a_missing_run_names_it(tmp_path, monkeypatch, refused):
    (tmp_path / "out" / "tiny").mkdir(parents=True)
    (tmp_path / "out" / "tiny" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0, "tokens": 64}\n')
    (tmp_path / "out" / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    line = refused(main, ["plot", "out/tiny", "out/tiny-300/metrics.jsonl", "--output", "out/compare"])
    assert line == "gpt-eval: error: out/tiny-300/metrics.jsonl: no such file or folder; out/ holds: tiny, empty"
    line = refused(main, ["plot", "out/tiny", "out/empty", "--output", "out/compare"])
    assert line == "gpt-eval: error: out/empty: no metrics.jsonl in it; give a run folder holding metrics.jsonl, or such a file"
    assert not (tmp_path / "out" / "compare").exists()


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path / "nowhere"), "--debug"])
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("gpt-eval: error: ")
