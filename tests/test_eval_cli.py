"""gpt-eval end to end: a saved tiny model folder with --data-dir --limit, the results JSON, val loss,
and `gpt-eval plot`."""

import json
from pathlib import Path

import pytest

from eval import run_tasks
from eval.cli import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "gpt2-tokenizer").is_dir(), reason=f"shared data not found at {DATA}")
ALL_TASKS = "hellaswag,lambada,wikitext,piqa,arc_easy,arc_challenge,winogrande"


def test_cli_end_to_end(model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "results.json"
    main(["--model", str(model_dir), "--tasks", ALL_TASKS, "--data-dir", str(DATA), "--limit", "1",
          "--batch-size", "4", "--device", "cpu", "--dtype", "float32", "--scoring", "nanogpt", "--output", str(out)])
    printed = capsys.readouterr().out
    assert "hellaswag" in printed and "word_perplexity" in printed and "results written to" in printed

    data = json.loads(out.read_text())
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    direct = run_tasks(model, tokenizer, ALL_TASKS, data_dir=DATA, scoring="nanogpt", limit=1, batch_size=16)
    assert data["results"].keys() == direct.keys()
    for task, metrics in direct.items():
        for metric, value in metrics.items():
            expected = None if value is None else pytest.approx(value, rel=1e-5)  # one item has no stderr
            assert data["results"][task][metric] == expected, (task, metric)
    assert data["results"]["hellaswag"]["n"] == 1 and data["scoring"] == "nanogpt"
    assert {e["task"] for e in data["entries"]} == set(direct)


def test_cli_val_loss(model_dir, tmp_path, capsys):
    import numpy as np
    from transformers import AutoTokenizer

    import token_shards

    tokens = np.random.default_rng(0).integers(0, 50257, 3000).astype(np.uint16)
    sha = token_shards.write_shard(tmp_path / "val_000000.bin", tokens)
    (tmp_path / "manifest.json").write_text(json.dumps({
        "vocab_size": 50257, "eot_id": 50256, "tokenizer": {"name": "gpt2", "hash": token_shards.tokenizer_hash(AutoTokenizer.from_pretrained(model_dir))},
        "shards": [{"file": "val_000000.bin", "split": "val", "tokens": 3000, "docs": 1, "sha256": sha}]}))
    out = tmp_path / "val.json"
    main(["--model", str(model_dir), "--tasks", "", "--val-data-dir", str(tmp_path), "--val-batches", "2",
          "--seq-len", "32", "--batch-size", "2", "--output", str(out)])
    val = json.loads(out.read_text())["results"]["val"]
    assert val["n"] == 2 * 2 * 32 and val["perplexity"] == pytest.approx(2.718281828 ** val["loss"], rel=1e-6)
    with pytest.raises(SystemExit):
        main(["--model", str(model_dir), "--dtype", "fp8"])
    assert "gpt-eval: error: --dtype 'fp8'" in capsys.readouterr().err


def test_plot(tmp_path, capsys):
    runs = []
    for name, slope in (("baseline", 1.0), ("variant", 1.2)):
        run = tmp_path / name
        run.mkdir()
        with open(run / "metrics.jsonl", "w") as f:
            for step in range(1, 41):
                record = {"step": step, "loss": 10 / (1 + slope * step / 10), "lr": 6e-4, "tokens": step * 524288}
                if step % 10 == 0:
                    record.update(val_loss=record["loss"] + 0.1, hellaswag_acc_norm=0.25 + 0.002 * step * slope)
                f.write(json.dumps(record) + "\n")
        runs.append(run)
    out = tmp_path / "plots"
    main(["plot", str(runs[0]), str(runs[1] / "metrics.jsonl"), "--output", str(out)])
    for name in ("loss.png", "hellaswag.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert sorted(p.name for p in out.iterdir()) == ["hellaswag.png", "loss.png"]  # no temp files
    with pytest.raises(SystemExit):
        main(["plot", str(tmp_path / "missing"), "--output", str(out)])
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (f"gpt-eval: error: {tmp_path / 'missing'}: no such file or folder; "
                                            f"{tmp_path}/ holds: baseline, variant, plots")


def test_loading_a_model_logs_no_warning(model_dir):
    """The strict load quiets transformers' load report; transformers must not answer that with a tensor-parallel
    warning ("The following layers were not sharded") on a load that uses no tensor parallelism."""
    import logging

    from transformers import AutoModelForCausalLM

    from cli_guard import load_model

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    keep, root = Keep(), logging.getLogger("transformers")
    root.addHandler(keep)
    try:
        load_model(AutoModelForCausalLM.from_pretrained, str(model_dir), "--model")
    finally:
        root.removeHandler(keep)
    assert keep.messages == []
