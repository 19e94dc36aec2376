"""The fused linear + cross-entropy (chunked PyTorch path on CPU) against the plain lm_head + transformers' loss.

Tolerance: fp32, loss atol 1e-6, gradients atol 1e-6 / rtol 1e-5 (only the order of the sums differs).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeling_gpt import GPTConfig, GPTForCausalLM
from modeling_gpt.loss import fused_linear_cross_entropy
from train_accelerate import MetricsLog

REPO = Path(__file__).resolve().parents[1]

VOCAB = 1000  # pads to 1024: the padded rows must never enter the softmax
VARIANTS = ["tiny", "gpt2.5"]


def tiny(preset, **overrides):
    torch.manual_seed(0)
    config = GPTConfig.from_preset(preset, vocab_size=VOCAB, n_layer=2, n_embd=64, n_head=4, n_positions=128,
                                   initializer_range=0.2, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, **overrides)
    return GPTForCausalLM(config).train()


def batch(B=3, T=20, seed=1):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def loss_and_grads(model, **inputs):
    model.zero_grad()
    out = model(**inputs)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_same_loss_and_grads(model, **inputs):
    plain, plain_grads = loss_and_grads(model, skip_logits=False, **inputs)
    fused, fused_grads = loss_and_grads(model, skip_logits=True, **inputs)
    assert fused.logits is None and plain.logits.shape[-1] == VOCAB
    torch.testing.assert_close(fused.loss, plain.loss, atol=1e-6, rtol=0)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    head = fused_grads["transformer.wte.weight"]  # lm_head, tied: and no padded id is ever an input
    assert torch.equal(head[VOCAB:], torch.zeros_like(head[VOCAB:]))
    assert torch.equal(plain_grads["transformer.wte.weight"][VOCAB:], head[VOCAB:])


@pytest.mark.parametrize("preset", VARIANTS)
def test_fused_loss_and_gradients_equal_the_plain_path(preset):
    x = batch()
    labels = x.clone()
    labels[0, :7] = -100
    labels[2, 11:] = -100
    assert_same_loss_and_grads(tiny(preset), input_ids=x, labels=labels)


@pytest.mark.parametrize("preset", VARIANTS)
def test_fused_loss_takes_the_trainers_shifted_labels_and_a_token_count(preset):
    x, y = batch(seed=1), batch(seed=2)
    y[1, :5] = -100
    assert_same_loss_and_grads(tiny(preset), input_ids=x, labels=y, shift_labels=y)
    assert_same_loss_and_grads(tiny(preset), input_ids=x, labels=y, num_items_in_batch=torch.tensor(80))


def test_the_config_turns_it_on_for_training_and_logits_come_back_whenever_asked():
    model = tiny("tiny", fused_loss=True)
    x = batch()
    assert model(x, labels=x).logits is None
    assert model(x, labels=x, skip_logits=False).logits.shape == (3, 20, VOCAB)
    assert model(x).logits.shape == (3, 20, VOCAB)  # no labels: logits
    model.eval()
    with torch.no_grad():
        scored = model(x, labels=x)
    assert scored.logits.shape == (3, 20, VOCAB) and torch.isfinite(scored.loss)
    with pytest.raises(ValueError, match="^skip_logits=True needs labels: without them there is no loss to compute$"):
        model(x, skip_logits=True)


def test_fused_loss_without_gradients_equals_the_plain_path():
    model = tiny("gpt2.5")
    x = batch()
    with torch.no_grad():
        fused, plain = model(x, labels=x, skip_logits=True).loss, model(x, labels=x).loss
    torch.testing.assert_close(fused, plain, atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk", [1, 7, 60, 1024])
def test_chunks_of_any_size_give_the_plain_loss_and_gradients(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(3, 20, 64, requires_grad=True)
    weight = (0.1 * torch.randn(1024, 64)).requires_grad_()
    labels = batch()
    labels[1, 4:9] = -100
    logits = hidden @ weight[:VOCAB].t()
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
    want = torch.autograd.grad(plain, (hidden, weight))
    fused = fused_linear_cross_entropy(hidden, weight, labels, VOCAB, chunk=chunk)
    torch.testing.assert_close(fused, plain, atol=1e-6, rtol=0)
    for got, expected in zip(torch.autograd.grad(fused, (hidden, weight)), want):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("preset", VARIANTS)
def test_training_step_compiles_in_one_graph(preset, fused):
    model = tiny(preset, fused_loss=fused)
    x = batch()
    _, eager = loss_and_grads(model, input_ids=x, labels=x, shift_labels=x)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    model.zero_grad()
    compiled(input_ids=x, labels=x, shift_labels=x).loss.backward()  # as the trainer calls it
    torch._dynamo.reset()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager[name], atol=1e-6, rtol=1e-5, msg=name)


RECIPE = """\
model_preset: tiny
micro_batch_size: 4
seq_len: 64
total_batch_tokens: 512
max_steps: 4
learning_rate: 3.0e-3
warmup_steps: 2
eval_interval: 4
val_batches: 2
log_interval: 1
save_interval: 0
tracker: none
"""


@pytest.mark.slow
def test_the_trainer_with_fused_loss_follows_the_plain_run(tmp_path, mini_data):
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    losses = {}
    for fused in ("false", "true"):
        out = tmp_path / f"fused_{fused}"
        argv = [sys.executable, str(REPO / "train_accelerate.py"), "--config", str(tmp_path / "recipe.yaml"),
                "--data_dir", str(mini_data), "--output_dir", str(out), "--fused_loss", fused]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads((out / "final" / "config.json").read_text())["fused_loss"] is (fused == "true")
        losses[fused] = [(r["loss"], r.get("val_loss")) for r in MetricsLog(out / "metrics.jsonl").read()]
    assert len(losses["true"]) == 4
    for (loss, val), (want, want_val) in zip(losses["true"], losses["false"]):
        assert loss == pytest.approx(want, abs=1e-5) and (val == want_val or val == pytest.approx(want_val, abs=1e-5))


@pytest.mark.slow
def test_bench_loss_runs_every_path_to_the_same_loss(tmp_path):
    out = tmp_path / "loss.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench_loss.py"), "--device", "cpu", "--tokens", "64",
                           "--n_embd", "64", "--steps", "1", "--output", str(out)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["path"] for r in rows] == ["transformers", "ours_before", "ours_plain", "ours_fused"]
    assert rows[0]["memory_vs_transformers"] == rows[0]["speed_vs_transformers"] == 1.0
    for r in rows:
        assert r["loss"] == pytest.approx(rows[0]["loss"], abs=1e-5) and r["kernel"] == "pytorch"
