"""tokenize_fineweb.py: documents -> shards, exact counts, tokenizers, kill -9 and resume, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import token_shards
import tokenize_fineweb
from tokenize_fineweb import TokenizeArguments, run

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MINI = SHARED / "fineweb-edu-mini"
pytestmark = pytest.mark.skipif(not MINI.is_dir(), reason=f"shared data not found at {SHARED}")


@pytest.fixture(scope="module", autouse=True)
def offline():
    """tiktoken's GPT-2 files from shared/data, and no Hub requests (they would retry for a minute)."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken-cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def enc(offline):
    import tiktoken

    return tiktoken.get_encoding("gpt2")


@pytest.fixture(scope="module")
def mini_docs():
    import pyarrow.parquet as pq

    rows = [r for f in sorted((MINI / "sample" / "10BT").glob("*.parquet")) for r in pq.read_table(f, columns=["text", "token_count"]).to_pylist()]
    return [r["text"] for r in rows], [r["token_count"] for r in rows]


def stream(out, split=None):
    """The whole token stream of an output folder, in order (val shards first)."""
    shards = [s for s in token_shards.read_manifest(out)["shards"] if split in (None, s["split"])]
    return np.concatenate([np.asarray(token_shards.open_shard(Path(out) / s["file"])) for s in shards])


def documents(tokens, eot):
    cuts = np.flatnonzero(tokens == eot).tolist() + [tokens.size]
    assert cuts[0] == 0, "the stream must open with an EOT"
    return [tokens[a + 1:b] for a, b in zip(cuts[:-1], cuts[1:])]


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory, offline):
    out = tmp_path_factory.mktemp("mini")
    run(TokenizeArguments(output=str(out), dataset=str(MINI), name="sample-10BT", shard_size=100_000, val_tokens=50_000))
    return out


def test_mini_round_trip_and_exact_counts(mini_run, mini_docs, enc):
    texts, token_counts = mini_docs
    manifest = token_shards.read_manifest(mini_run)
    assert manifest["vocab_size"] == 50257 and manifest["eot_id"] == 50256 and manifest["dtype"] == "uint16"
    # FineWeb-Edu's token_count column is GPT-2 tokens per document; we add one EOT before each
    assert manifest["stream"]["tokens"] == sum(token_counts) + len(texts) == 618_308 + 195
    assert manifest["stream"] == {"complete": True, "documents": 195, "records": 195, "resume": None, "skipped": 0,
                                  "stop_reason": "end_of_data", "tokens": 618_503}
    shards = manifest["shards"]
    assert [s["split"] for s in shards] == ["val"] + ["train"] * 6
    assert [s["tokens"] for s in shards] == [50_000] + [100_000] * 5 + [68_503]
    assert sum(s["docs"] for s in shards) == 195
    for s in shards:
        assert token_shards.file_sha256(mini_run / s["file"]) == s["sha256"]
        assert token_shards.read_shard_header(mini_run / s["file"]) == (np.dtype("<u2"), s["tokens"])

    tokens = stream(mini_run)
    docs = documents(tokens, 50256)
    assert [enc.decode(d.tolist()) for d in docs] == texts
    assert tokens.size == sum(s["tokens"] for s in shards)

    # the saved tokenizer is GPT-2's, whichever way it was built
    from modeling_gpt.tokenizer import gpt2_tokenizer

    saved = token_shards.load_tokenizer(mini_run)
    reference = gpt2_tokenizer(SHARED / "gpt2-tokenizer")
    assert token_shards.tokenizer_hash(saved) == token_shards.tokenizer_hash(reference) == manifest["tokenizer"]["hash"]
    assert saved.decode(docs[0].tolist()) == texts[0]

    loader = token_shards.ShardDataLoader(mini_run, split="val", batch_size=2, seq_len=64, vocab_size=50257, eot_id=50256,
                                          tokenizer_hash=token_shards.tokenizer_hash(reference))
    x, y = loader.next_batch()
    assert x.flatten().tolist() == tokens[:128].tolist() and y.flatten().tolist() == tokens[1:129].tolist()


def test_hf_tokenizer_gives_tiktoken_ids_and_max_tokens_stops_exactly(tmp_path, mini_run):
    out = tmp_path / "hf"
    result = run(TokenizeArguments(output=str(out), dataset=str(MINI), name="sample-10BT", tokenizer=str(SHARED / "gpt2-tokenizer"),
                                   shard_size=30_000, val_tokens=0, max_tokens=123_457, workers=2))
    assert result["tokenizer"]["backend"] == "tokenizers"
    assert result["tokenizer"]["hash"] == token_shards.read_manifest(mini_run)["tokenizer"]["hash"]
    assert result["stream"]["stop_reason"] == "max_tokens" and result["stream"]["tokens"] == 123_457
    assert [s["split"] for s in result["shards"]] == ["train"] * 5
    assert stream(out).tolist() == stream(mini_run)[:123_457].tolist()


def write_jsonl(path, records):
    with open(path, "wb") as f:
        for r in records:
            f.write(r if isinstance(r, bytes) else json.dumps(r).encode() + b"\n")
    return path


MESSY = [
    {"text": "A plain document."},
    b'{"text": "bytes that are not UTF-8: \xff\xfe end"}\n',
    {"text": 5},
    {"text": ""},
    {"text": "a lone surrogate \ud800 in JSON"},
    {"text": "text mentioning <|endoftext|> is just text"},
    {"text": "emoji \U0001F600 and accents \u00e9\u00e8"},
    {"text": None},
    {"text": "the last one"},
]


@pytest.mark.parametrize("tokenizer", ["gpt2", "gpt2-tokenizer"])
def test_messy_documents_are_skipped_or_repaired_never_fatal(tmp_path, enc, tokenizer):
    data = write_jsonl(tmp_path / "messy.jsonl", MESSY)
    name = "gpt2" if tokenizer == "gpt2" else str(SHARED / tokenizer)
    result = run(TokenizeArguments(output=str(tmp_path / "out"), data_files=[str(data)], tokenizer=name, val_tokens=0, max_docs=5))
    assert result["stream"]["skipped"] == 2 and result["stream"]["documents"] == 5
    assert result["stream"]["stop_reason"] == "max_docs" and result["stream"]["records"] == 7
    expected = ["A plain document.", "bytes that are not UTF-8: \ufffd\ufffd end", "a lone surrogate \ufffd in JSON",
                "text mentioning <|endoftext|> is just text", "emoji \U0001F600 and accents \u00e9\u00e8"]
    docs = documents(stream(tmp_path / "out"), 50256)
    assert [d.tolist() for d in docs] == [enc.encode_ordinary(t) for t in expected]


def test_text_files_are_one_document_each(tmp_path, enc):
    (tmp_path / "a.txt").write_bytes(b"first file\nsecond line \xff\n")
    (tmp_path / "b.txt").write_text("second file", encoding="utf-8")
    result = run(TokenizeArguments(output=str(tmp_path / "out"), data_files=[str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], val_tokens=0))
    assert result["stream"]["documents"] == 2
    docs = documents(stream(tmp_path / "out"), 50256)
    assert [enc.decode(d.tolist()) for d in docs] == ["first file\nsecond line \ufffd\n", "second file"]


def test_train_tokenizer_then_reuse_it(tmp_path, mini_docs):
    texts, _ = mini_docs
    first = tmp_path / "trained"
    result = run(TokenizeArguments(output=str(first), dataset=str(MINI), name="sample-10BT", train_tokenizer=True, vocab_size=600,
                                   tokenizer_train_docs=20, max_docs=25, shard_size=50_000, val_tokens=10_000))
    assert result["vocab_size"] == 600 and result["eot_id"] == 0 and result["dtype"] == "uint16"
    assert result["tokenizer"]["name"] == "trained-bpe-600" and result["stream"]["documents"] == 25
    tokenizer = token_shards.load_tokenizer(first)
    assert len(tokenizer) == 600 and token_shards.tokenizer_hash(tokenizer) == result["tokenizer"]["hash"]
    tokens = stream(first)
    assert tokens.max() < 600
    assert [tokenizer.decode(d.tolist()) for d in documents(tokens, 0)] == texts[:25]  # byte-level BPE is lossless

    again = tmp_path / "again"
    run(TokenizeArguments(output=str(again), dataset=str(MINI), name="sample-10BT", tokenizer=str(first / "tokenizer"),
                          max_docs=25, shard_size=50_000, val_tokens=10_000))
    assert token_shards.read_manifest(again)["shards"] == result["shards"]


def test_kill_9_then_resume_gives_byte_identical_shards(tmp_path):
    argv = ["--dataset", str(MINI), "--name", "sample-10BT", "--shard-size", "5000", "--val-tokens", "12000"]
    reference = tmp_path / "reference"
    tokenize_fineweb.main(argv + ["--output", str(reference)])

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "tokenize_fineweb", *argv, "--output", str(killed)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = killed / "manifest.json"
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.is_file() and len(json.loads(manifest.read_text())["shards"]) >= 3:
            break
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = json.loads(manifest.read_text())
    ref_manifest = token_shards.read_manifest(reference)
    assert len(ref_manifest["shards"]) == 3 + 122
    assert not partial["stream"]["complete"] and 3 <= len(partial["shards"]) < 125, "the run was not killed mid-way"

    tokenize_fineweb.main(argv + ["--output", str(killed)])
    assert token_shards.read_manifest(killed) == ref_manifest
    for s in ref_manifest["shards"]:
        assert (killed / s["file"]).read_bytes() == (reference / s["file"]).read_bytes(), s["file"]
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in reference.iterdir())


def test_cli_errors_name_the_bad_value(tmp_path, capsys):
    def error(*argv):
        with pytest.raises(SystemExit) as info:
            tokenize_fineweb.main(["--output", str(tmp_path / "out"), *argv])
        assert info.value.code == 2
        return capsys.readouterr().err

    data = write_jsonl(tmp_path / "d.jsonl", [{"body": "x", "id": 1}])
    assert "--text-column 'text' is not in the data; columns present: body, id" in error("--data-files", str(data))
    assert "unsupported extension; accepted: .parquet, .jsonl, .json, .txt" in error("--data-files", str(tmp_path / "d.csv"))
    assert "no such file" in error("--data-files", str(tmp_path / "missing.jsonl"))
    assert "--shard-size 0: expected a positive integer" in error("--shard-size", "0")
    assert "cannot be combined with --tokenizer" in error("--train-tokenizer", "--tokenizer", "some/tokenizer")
    assert "--tokenizer " + str(tmp_path) + ": cannot load" in error("--data-files", str(data), "--text-column", "body", "--tokenizer", str(tmp_path))

    good = write_jsonl(tmp_path / "good.jsonl", [{"text": "hello world"}] * 3)
    tokenize_fineweb.main(["--output", str(tmp_path / "out"), "--data-files", str(good)])
    assert "holds a run with other settings (shard_size, val_tokens differ)" in error("--data-files", str(good), "--shard-size", "7")
    tokenize_fineweb.main(["--output", str(tmp_path / "out"), "--data-files", str(good)])
    assert "already complete" in capsys.readouterr().err
    tokenize_fineweb.main(["--output", str(tmp_path / "out"), "--data-files", str(good), "--shard-size", "7", "--overwrite"])
    assert [s["tokens"] for s in token_shards.read_manifest(tmp_path / "out")["shards"]] == [7, 2]
