"""The README's main job: configs/tiny.yaml tokenizes the offline FineWeb-Edu stand-in when its shards are
missing, the loss goes down, and the final folder works with transformers' pipeline."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from train_accelerate import MetricsLog

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_tiny_recipe_tokenizes_trains_and_exports(tmp_path):
    if not (SHARED / "fineweb-edu-mini").is_dir() or not (SHARED / "gpt2-tokenizer").is_dir():
        pytest.skip(f"the offline FineWeb-Edu stand-in or GPT-2 tokenizer is missing under {SHARED}")
    data, out = tmp_path / "fineweb-edu-mini", tmp_path / "tiny"
    # the recipe as shipped, shortened: 24 steps of 128 tokens
    result = subprocess.run(
        [sys.executable, str(REPO / "train_accelerate.py"), "--config", "configs/tiny.yaml", "--data_dir", str(data),
         "--output_dir", str(out), "--max_steps", "24", "--warmup_steps", "4", "--learning_rate", "1e-2",
         "--micro_batch_size", "2", "--seq_len", "64", "--total_batch_tokens", "128", "--eval_interval", "24", "--val_batches", "4", "--save_interval", "0", "--log_interval", "5"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["vocab_size"] == 50257 and manifest["eot_id"] == 50256
    records = MetricsLog(out / "metrics.jsonl").read()
    assert [r["step"] for r in records] == list(range(1, 25))
    assert all(r["tokens"] == 128 * r["step"] for r in records)
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-5:]) / 5
    assert first > 10.5  # ln(50257) = 10.8: a fresh model knows nothing
    assert last < first - 1.5, [round(r["loss"], 3) for r in records]
    assert records[-1]["val_loss"] < first - 0.5  # the val split is other documents: it falls more slowly
    assert records[-1]["samples"][0].startswith("The history of")
    assert "step     24 | loss" in result.stdout  # the log line, printed above the progress bar

    import modeling_gpt  # noqa: F401  (registers the architecture with the Auto classes)
    from transformers import AutoModelForCausalLM, GenerationConfig, pipeline

    final = out / "final"
    generation = GenerationConfig.from_pretrained(final)
    assert generation.eos_token_id == generation.pad_token_id == 50256 and generation.top_k == 50
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.config.n_layer == 2 and model.config.n_embd == 64
    generator = pipeline("text-generation", model=str(final))
    text = generator("The history of", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("The history of") and len(text) > len("The history of")
