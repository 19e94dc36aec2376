"""Fine-tuning (init_from) through configs/finetune-shakespeare.yaml, offline: a local random GPT2LMHeadModel stands in
for openai-community/gpt2, Tiny Shakespeare is tokenized by gpt-tokenize --data-files. The validation loss drops and
the samples come out in Shakespeare's tokens; init_from also takes our checkpoints and final/ folders."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import token_shards
import train_accelerate as ta
from eval import mean_loss
from modeling_gpt import GPTForCausalLM
from train_accelerate import MetricsLog

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"
STEPS = 12
# the recipe at the size of a test: a 2-layer GPT-2 with GPT-2's vocabulary, from random weights, so a high rate
SMALL = ["--micro_batch_size", "8", "--seq_len", "64", "--total_batch_tokens", "512", "--max_steps", str(STEPS),
         "--learning_rate", "1e-2", "--eval_interval", "6", "--val_batches", "4", "--log_interval", "5",
         "--save_interval", str(STEPS), "--sample_max_new_tokens", "32", "--mixed_precision", "no", "--tracker", "none"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """(root, pretrained GPT-2 folder, data folder, run folder) after fine-tuning."""
    for needed in (SHAKESPEARE, SHARED / "gpt2-tokenizer"):
        if not needed.exists():
            pytest.skip(f"offline data is missing: {needed}")
    import tokenize_fineweb
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("finetune")
    tokenize_fineweb.main(["--data-files", str(SHAKESPEARE), "--output", str(root / "data"), "--val-tokens", "16384",
                           "--tokenizer", str(SHARED / "gpt2-tokenizer")])
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=128)).save_pretrained(root / "gpt2")
    argv = [sys.executable, str(REPO / "train_accelerate.py"), "--config", str(REPO / "configs" / "finetune-shakespeare.yaml"),
            "--init_from", str(root / "gpt2"), "--data_dir", str(root / "data"), "--output_dir", str(root / "run"), *SMALL]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def shakespeare_share(texts, tokenizer, vocabulary) -> float:
    """The share of the completions' tokens that occur in Tiny Shakespeare."""
    ids = [i for text in texts for i in tokenizer(text.removeprefix("ROMEO:")).input_ids]
    return sum(i in vocabulary for i in ids) / len(ids)


@pytest.mark.slow
def test_finetuning_lowers_val_loss_and_brings_the_style(finetuned):
    data, run = finetuned / "data", finetuned / "run"
    tokenizer = token_shards.load_tokenizer(data)
    pretrained = GPTForCausalLM.from_gpt2(finetuned / "gpt2")
    val = token_shards.ShardDataLoader(data, split="val", batch_size=8, seq_len=64, shuffle=False)
    before = mean_loss(pretrained, val, 4)
    records = MetricsLog(run / "metrics.jsonl").read()
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [6, STEPS]
    assert before > 10 and evals[-1]["val_loss"] < before - 3 and evals[-1]["val_loss"] <= evals[0]["val_loss"]

    vocabulary = {int(i) for path in data.glob("*.bin") for i in np.unique(token_shards.open_shard(path))}
    old = ta.sample(pretrained, tokenizer, ["ROMEO:"] * 4, 32, seed=0, device=torch.device("cpu"))
    new = evals[-1]["samples"] + ta.sample(GPTForCausalLM.from_pretrained(run / "final"), tokenizer, ["ROMEO:"] * 3, 32,
                                           seed=0, device=torch.device("cpu"))
    shares = shakespeare_share(old, tokenizer, vocabulary), shakespeare_share(new, tokenizer, vocabulary)
    assert shares[0] < 0.5 and shares[1] > 0.85, shares


@pytest.mark.slow
def test_init_from_our_checkpoint_and_final_folder(finetuned):
    run = finetuned / "run"
    final = load_file(run / "final" / "model.safetensors")
    for source in (run / "checkpoints" / f"step_{STEPS:07d}", run / "final"):
        model = ta.build_model(ta.ModelArguments(init_from=str(source), dropout=0.0), 50257, 50256, torch.device("cpu"))
        assert model.config.dropout == 0.0 and all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
        state = model.state_dict()
        for name, tensor in final.items():
            assert torch.equal(state[name], tensor), (source, name)
        assert model.lm_head.weight is model.transformer.wte.weight


def test_init_from_gpt2_converts_exactly_with_the_dropout_asked_for(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=300, bos_token_id=299,
                               eos_token_id=299)).save_pretrained(tmp_path)
    native = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ours = ta.build_model(ta.ModelArguments(init_from=str(tmp_path), dropout=0.2), 300, 299, torch.device("cpu"))
    assert ours.config.dropout == 0.2 and ours.config._attn_implementation == "sdpa"
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    x = torch.randint(0, 300, (2, 16))
    torch.testing.assert_close(ours.eval()(x).logits, native(x).logits, rtol=1e-4, atol=1e-4)


def test_init_from_refuses_a_sharded_checkpoint_and_shape_overrides(tmp_path):
    (tmp_path / "pytorch_model_fsdp_0").mkdir()
    (tmp_path / "trainer_state.json").write_text(json.dumps({"step": 1, "model_config": {}}))
    with pytest.raises(ta.ConfigError, match="is a sharded FSDP checkpoint; merge it into one file first: accelerate merge-weights"):
        ta.load_pretrained(str(tmp_path), None)
    with pytest.raises(ta.ConfigError, match=r"model overrides \{'n_layer': 4\} change the shape .* only dropout"):
        ta.parse_args(["--init_from", "gpt2", "--n_layer", "4", "--dropout", "0.1", "--data_dir", "d"])
