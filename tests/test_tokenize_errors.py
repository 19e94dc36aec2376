"""gpt-tokenize on hostile input: one output folder has one writer, a damaged output is never reported complete,
and every bad file or value ends in one line `gpt-tokenize: error: ...` (exit 2) that names it, without a traceback."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import token_shards
import tokenize_fineweb
from conftest import ctrl_c_as_on_a_terminal

REPO = Path(__file__).resolve().parents[1]
WORDS = "the cat sat on a mat while rivers carry water from high mountains down to the open sea".split()
# a 300-token BPE trained on the data itself: no tokenizer download, every run takes a second
SMALL = ["--train-tokenizer", "--vocab-size", "300", "--tokenizer-train-docs", "50", "--workers", "1"]


def write_docs(path: Path, n: int, words: int = 40) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))}) + "\n")
    return path






@pytest.fixture
def done(tmp_path):
    """A complete output folder and the command that made it."""
    argv = ["--data-files", str(write_docs(tmp_path / "docs.jsonl", 60)), "--output", str(tmp_path / "out"),
            "--shard-size", "500", "--val-tokens", "500", *SMALL]
    tokenize_fineweb.main(argv)
    return tmp_path / "out", argv


HOLD_LOCK = """
import sys, time
from cli_guard import FolderLock
FolderLock(sys.argv[1], "--output").acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_run_into_a_locked_folder_is_refused_with_the_holders_pid(done, capsys, refused, tree_digest):
    out, argv = done
    before = tree_digest(out)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = refused(tokenize_fineweb.main, argv[:-len(SMALL)] + ["--shard-size", "300", "--overwrite", *SMALL])
        assert line == (f"gpt-tokenize: error: {out} is in use by another run (pid {holder.pid}); wait for it to end "
                        "or choose another --output")
        assert tree_digest(out) == before
    finally:
        holder.kill()  # SIGKILL: the kernel drops the flock, no stale lock is left
        holder.wait()
    tokenize_fineweb.main(argv)
    assert "already complete" in capsys.readouterr().err


@pytest.mark.parametrize("kind, link", [("a symbolic link", os.symlink), ("a hard link (2 names for one file)", os.link)])
def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(tmp_path, refused, kind, link):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "o"
    out.mkdir()
    link(victim, out / ".lock")
    argv = ["--data-files", str(write_docs(tmp_path / "docs.jsonl", 60)), "--output", str(out), *SMALL]
    assert refused(tokenize_fineweb.main, argv) == (
        f"gpt-tokenize: error: {out / '.lock'} is {kind}: a lock file is opened only as a plain file of its folder, "
        "never through a link; remove it and run the same command again")
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


@pytest.mark.parametrize("damage", ["truncated", "missing", "longer"])
def test_a_damaged_shard_is_never_reported_complete(done, damage, refused):
    out, argv = done
    shard = out / token_shards.read_manifest(out)["shards"][1]["file"]
    data = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(data[:-10])
    elif damage == "missing":
        shard.unlink()
    else:  # a valid shard of another length: the header matches the file, not the manifest
        import numpy as np

        token_shards.write_shard(shard, np.arange(7, dtype=np.uint16))
    line = refused(tokenize_fineweb.main, argv)
    assert line.startswith(f"gpt-tokenize: error: {out} cannot be resumed: shard {shard} ")
    assert line.endswith("pass --overwrite to tokenize it again from the start")
    tokenize_fineweb.main([*argv, "--overwrite"])
    assert shard.read_bytes() == data  # redone from the start, identical


@pytest.mark.parametrize("content, message", [
    ("{}", "is not a gpt-tokenize manifest (missing or malformed: vocab_size, eot_id, tokenizer, shards)"),
    ("[1, 2]", "is not a gpt-tokenize manifest"),
    ('{"vocab_size": 300, "eot_id": 0, "tokenizer": {}, "shards": [{"file": "x.bin"}]}',
     "is not a gpt-tokenize manifest (missing or malformed: shards)"),
    ('{"vocab_size": 5', "is not valid JSON"),
])
def test_a_damaged_manifest_is_one_line(done, content, message, refused):
    out, argv = done
    (out / "manifest.json").write_text(content)
    assert message in refused(tokenize_fineweb.main, argv)


def test_bad_data_files_name_the_file_and_line(tmp_path, refused):
    out = ["--output", str(tmp_path / "out"), *SMALL]
    bad = write_docs(tmp_path / "bad.jsonl", 3)
    with open(bad, "a") as f:
        f.write('{"text": not json}\n')
    assert refused(tokenize_fineweb.main, ["--data-files", str(bad), *out]) == (
        f"gpt-tokenize: error: {bad} line 4 is not valid JSON (Expecting value): repair or remove that line")
    listed = tmp_path / "list.jsonl"
    listed.write_text('{"text": "fine"}\n["not", "an", "object"]\n')
    assert refused(tokenize_fineweb.main, ["--data-files", str(listed), *out]) == (
        f"gpt-tokenize: error: {listed} line 2 is a JSON list, not an object with a text field")
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    assert refused(tokenize_fineweb.main, ["--data-files", str(empty), *out]) == f"gpt-tokenize: error: --data-files {empty}: the file is empty"
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet at all")
    assert refused(tokenize_fineweb.main, ["--data-files", str(garbage), *out]).startswith(f"gpt-tokenize: error: cannot read {garbage}: ")


@pytest.mark.parametrize("errno_, message", [
    ("ENOSPC", "No space left on device: {file} (disk full): free some space, then run the same command again"),
    ("EROFS", "Read-only file system: {file}: choose a folder you can write to"),
])
def test_a_full_or_read_only_disk_is_one_line_and_the_same_command_resumes(tmp_path, monkeypatch, refused, errno_,
                                                                           message):
    import errno

    argv = ["--data-files", str(write_docs(tmp_path / "docs.jsonl", 60)), "--output", str(tmp_path / "out"),
            "--shard-size", "500", "--val-tokens", "500", *SMALL]
    write_shard, calls = tokenize_fineweb.write_shard, []

    def fail_on_the_third_shard(path, tokens):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(getattr(errno, errno_), os.strerror(getattr(errno, errno_)), str(path))
        return write_shard(path, tokens)

    monkeypatch.setattr(tokenize_fineweb, "write_shard", fail_on_the_third_shard)
    assert refused(tokenize_fineweb.main, argv, code=1) == "gpt-tokenize: error: " + message.format(file=calls[-1])
    assert len(token_shards.read_manifest(tmp_path / "out")["shards"]) == 2  # what was written is kept
    monkeypatch.undo()
    tokenize_fineweb.main(argv)
    assert token_shards.read_manifest(tmp_path / "out")["stream"]["complete"]


def test_a_tokenizer_file_that_is_not_json_is_named(tmp_path, refused):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("not json {")
    (tok / "tokenizer_config.json").write_text("{}")
    argv = ["--data-files", str(write_docs(tmp_path / "docs.jsonl", 10)), "--output", str(tmp_path / "out"),
            "--tokenizer", str(tok), "--workers", "1"]
    assert refused(tokenize_fineweb.main, argv) == (
        f"gpt-tokenize: error: --tokenizer {tok}: cannot load a Hugging Face tokenizer from it (tokenizer.json is not "
        "valid JSON (Expecting value: line 1 column 1 (char 0))); give 'gpt2', a tokenizer folder or a Hub id")


def test_a_full_disk_while_saving_the_tokenizer_is_one_line_and_the_same_command_finishes(tmp_path, monkeypatch,
                                                                                         refused):
    import errno

    from transformers import PreTrainedTokenizerFast

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    argv = ["--data-files", str(write_docs(tmp_path / "docs.jsonl", 60)), "--output", str(tmp_path / "out"),
            "--shard-size", "500", "--val-tokens", "500", *SMALL]
    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", no_space)
    assert refused(tokenize_fineweb.main, argv, code=1) == (
        "gpt-tokenize: error: No space left on device (disk full): free some space, then run the same command again")
    monkeypatch.undo()
    tokenize_fineweb.main(argv)
    assert token_shards.read_manifest(tmp_path / "out")["stream"]["complete"]


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tokenize_fineweb.main(["--data-files", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o"), "--debug"])
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1] == f"gpt-tokenize: error: --data-files {tmp_path / 'missing.jsonl'}: no such file"


@pytest.mark.slow
def test_ctrl_c_says_how_to_continue_and_the_same_command_finishes(tmp_path):
    data = write_docs(tmp_path / "docs.jsonl", 4000, words=60)
    argv = ["--data-files", str(data), "--shard-size", "2000", "--val-tokens", "2000", *SMALL]
    reference = tmp_path / "reference"
    tokenize_fineweb.main([*argv, "--output", str(reference)])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tokenize_fineweb", *argv, "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_as_on_a_terminal)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        manifest = out / "manifest.json"
        if manifest.is_file() and len(json.loads(manifest.read_text())["shards"]) >= 2:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("gpt-tokenize: error: interrupted (Ctrl-C); run the same command again to "
                                           "continue from the last complete shard")
    assert not token_shards.read_manifest(out)["stream"]["complete"]
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    assert token_shards.read_manifest(out)["shards"] == token_shards.read_manifest(reference)["shards"]
