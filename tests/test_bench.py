"""bench/train_throughput.py and bench/generate.py in their smallest configurations (CPU, tiny models).

Speed itself is never asserted here; what is: both models hold the same weights and follow the same loop
(equal logits, losses and generated tokens), the FLOPs and MFU arithmetic, the peak-FLOPs table, and the
JSON each script writes.
"""

import importlib.machinery
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel, LlamaForCausalLM

from modeling_gpt import GPTConfig, GPTForCausalLM

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
TINY = ["--n_layer", "2", "--n_embd", "64", "--n_head", "4", "--vocab_size", "512", "--threads", "2"]

# the scripts import each other as they do when run from bench/ (Python puts a script's folder first on the path)
sys.path.insert(0, str(BENCH))
import bench_memory  # noqa: E402
import generate as gen  # noqa: E402
import train_throughput as tt  # noqa: E402


def tiny_config(preset: str) -> GPTConfig:
    extra = {"n_inner": 128} if preset == "gpt2.5" else {}
    return GPTConfig.from_preset(preset, n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=500,
                                 bos_token_id=499, eos_token_id=499, **extra)


@pytest.mark.parametrize("preset, native", [("tiny", GPT2LMHeadModel), ("gpt2.5", LlamaForCausalLM)])
def test_build_models_share_weights_and_use_sdpa(preset, native):
    models = tt.build_models(tiny_config(preset), ["ours", "transformers"], seed=0)
    assert isinstance(models["ours"], GPTForCausalLM) and isinstance(models["transformers"], native)
    assert all(m.config._attn_implementation == "sdpa" for m in models.values())
    assert tt.max_logit_diff(models, 500, seed=0) < 1e-5


def test_static_bytes_counts_weights_and_adamw_moments():
    model = GPTForCausalLM(tiny_config("tiny"))
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    x = torch.randint(0, 500, (2, 8))
    model(x, labels=x).loss.backward()
    optimizer.step()
    params = list(model.parameters())  # the tied head is one tensor, counted once
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    assert tt.static_bytes(model, optimizer) == 3 * param_bytes + 4 * len(params)  # + one fp32 step each


@pytest.mark.parametrize("preset, dtype", [("gpt2", "fp32"), ("gpt2.5", "fp32"), ("gpt2", "bf16")])
def test_train_throughput_runs_the_models_on_the_same_weights(tmp_path, capsys, preset, dtype):
    out = tmp_path / "train.json"
    argv = ["--preset", preset, *TINY, "--seq_len", "32", "--batch_size", "2", "--steps", "2", "--warmup", "1",
            "--rounds", "2", "--dtype", dtype, "--peak_tflops", "1.0", "--output", str(out)]
    tt.main(argv)
    result = json.loads(out.read_text())
    rows = {r["model"]: r for r in result["results"]}
    # the plain PyTorch reference is GPT-2: it joins the classic presets only
    assert list(rows) == (["ours", "transformers"] if preset == "gpt2.5" else ["ours", "plain", "transformers"])
    ours, theirs = rows["ours"], rows["transformers"]
    assert theirs["class"] == ("LlamaForCausalLM" if preset == "gpt2.5" else "GPT2LMHeadModel")
    assert result["max_logit_diff"] < 1e-5
    assert all(r["steps_run"] == 1 + 2 * 2 for r in rows.values())
    # same weights, same batches, same AdamW updates: the same losses, step after step (the plain reference's
    # softmax also covers the padded rows, a few thousandths of the loss here)
    tol = 2e-2 if dtype == "bf16" else 1e-4
    for row in rows.values():
        row_tol = tol if row["model"] != "plain" else 2e-2
        assert row["first_loss"] == pytest.approx(ours["first_loss"], abs=row_tol)
        assert row["last_loss"] == pytest.approx(ours["last_loss"], abs=row_tol)
    assert ours["last_loss"] < ours["first_loss"]
    fpt = tt.flops_per_token(GPTConfig.from_preset(preset, n_layer=2, n_embd=64, n_head=4, vocab_size=512, bos_token_id=0, eos_token_id=0), 32)
    assert result["flops_per_token"] == fpt
    for row in rows.values():
        assert row["mfu"] == pytest.approx(row["tokens_per_s"] * fpt / 1e12)
        assert row["peak_memory_gb"] is None  # CPU: torch.cuda memory stats do not apply
    for other in set(rows) - {"ours"}:
        assert result["ratios"][f"ours/{other}"] == pytest.approx(ours["tokens_per_s"] / rows[other]["tokens_per_s"])
    assert result["ratio_ours_vs_transformers"] == result["ratios"]["ours/transformers"]
    assert result["settings"]["dtype"] == dtype and result["settings"]["compile"] is False
    table = capsys.readouterr().out
    assert "ours/transformers: " in table and "GPTForCausalLM" in table


def test_train_throughput_accumulates_like_the_trainer_and_reports_a_failing_model(tmp_path, monkeypatch):
    out = tmp_path / "train.json"
    real_step = tt.Runner.step

    def step(self):
        if isinstance(self.model, tt.PlainGPT):
            raise RuntimeError("No available kernel. Aborting execution.\nmore detail")
        real_step(self)
    monkeypatch.setattr(tt.Runner, "step", step)
    tt.main(["--preset", "gpt2", *TINY, "--seq_len", "16", "--batch_size", "2", "--grad_accum", "3", "--steps", "2",
             "--warmup", "1", "--rounds", "1", "--output", str(out)])
    result = json.loads(out.read_text())
    rows = {r["model"]: r for r in result["results"]}
    assert rows["plain"] == {"model": "plain", "class": "PlainGPT",
                             "error": "RuntimeError: No available kernel. Aborting execution."}
    assert rows["ours"]["steps_run"] == rows["transformers"]["steps_run"] == 1 + 2  # optimizer steps (warmup included), of 3 micro-batches each
    assert result["ratios"]["ours/plain"] is None and result["ratios"]["ours/transformers"] > 0


def test_train_throughput_stopped_from_outside_leaves_the_rows_it_finished(tmp_path, monkeypatch):
    """gpu_suite kills a part at its time limit: the JSON on disk then holds every model measured so far."""
    out = tmp_path / "train.json"
    real_run = tt.Runner.run

    def run(self, n):
        if type(self.model).__name__ == "GPT2LMHeadModel":
            raise KeyboardInterrupt  # stands in for the kill: nothing after this point runs
        return real_run(self, n)
    monkeypatch.setattr(tt.Runner, "run", run)
    with pytest.raises(KeyboardInterrupt):
        tt.main(["--preset", "gpt2", *TINY, "--seq_len", "16", "--batch_size", "2", "--steps", "1", "--warmup", "1",
                 "--rounds", "1", "--output", str(out)])
    rows = {r["model"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["ours"]["tokens_per_s"] > 0 and rows["plain"]["tokens_per_s"] > 0
    assert rows["transformers"] == {"model": "transformers", "class": "GPT2LMHeadModel", "error": tt.NOT_MEASURED}


def test_train_throughput_refuses_float8_without_a_gpu(tmp_path):
    with pytest.raises(ValueError, match="--fp8 true needs a CUDA GPU of compute capability >= 8.9"):
        tt.main(["--preset", "tiny", *TINY, "--seq_len", "8", "--batch_size", "1", "--models", "ours,ours-fp8",
                 "--device", "cpu", "--output", str(tmp_path / "x.json")])


def test_generate_runs_both_models_to_the_same_tokens(tmp_path, capsys):
    out = tmp_path / "generate.json"
    gen.main(["--preset", "gpt2", *TINY, "--batch_sizes", "1,3", "--prompt_len", "8", "--new_tokens", "6",
              "--rounds", "1", "--output", str(out)])
    result = json.loads(out.read_text())
    rows = result["results"]
    assert [(r["batch_size"], r["model"]) for r in rows] == [(1, "ours"), (1, "transformers"),
                                                             (3, "ours"), (3, "transformers")]
    assert all(r["generated"] == 6 and r["same_tokens"] for r in rows)
    for a, b in (rows[:2], rows[2:]):
        assert a["ratio"] == b["ratio"] == pytest.approx(a["tokens_per_s"] / b["tokens_per_s"])
        assert a["tokens_per_s"] == pytest.approx(a["batch_size"] * 6 / (a["ms_per_token"] * 6 / 1000))
    assert "same tokens" in capsys.readouterr().out


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_no_script_shadows_a_module_it_may_import(script):
    # run from bench/, a script named like a module (tokenize, eval) would be imported in its place
    stem = script.removesuffix(".py")
    elsewhere = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
    assert stem not in sys.stdlib_module_names and importlib.machinery.PathFinder.find_spec(stem, elsewhere) is None, script


def test_scripts_run_from_the_command_line(tmp_path):
    out = tmp_path / "generate.json"
    cmd = [sys.executable, str(BENCH / "generate.py"), "--preset", "tiny", "--vocab_size", "512", "--models", "ours",
           "--batch_sizes", "1", "--prompt_len", "4", "--new_tokens", "2", "--rounds", "1", "--output", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=120)
    assert json.loads(out.read_text())["results"][0]["generated"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--models", "ours,gpt3"], "subset of"),
    (["--dtype", "fp16"], "dtype='fp16'"),
    (["--batch_size", "0"], "batch_size=0"),
    (["--sdpa_backend", "fast"], "sdpa_backend='fast'"),
])
def test_train_throughput_rejects_bad_settings(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        tt.main(["--preset", "tiny", *TINY, "--seq_len", "8", "--batch_size", "1", "--steps", "1", "--warmup", "0",
                 *argv, "--output", str(tmp_path / "x.json")])


def test_generate_rejects_bad_batch_sizes(tmp_path):
    with pytest.raises(ValueError, match="batch_sizes='1,x'"):
        gen.main(["--preset", "tiny", "--batch_sizes", "1,x", "--output", str(tmp_path / "x.json")])



def test_memory_bench_measures_both_models_on_the_same_batch():
    shape = ["--device", "cpu", "--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--batch_size", "2", "--seq_len", "32"]
    rows = [bench_memory.one(bench_memory.make_parser().parse_args([*shape, "--model", m, "--step", s]))
            for s in ("train", "eval") for m in ("ours", "transformers")]
    assert [(r["class"], r["step"]) for r in rows] == [("GPTForCausalLM", "train"), ("GPT2LMHeadModel", "train"),
                                                       ("GPTForCausalLM", "eval"), ("GPT2LMHeadModel", "eval")]
    assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], abs=1e-4) and rows[2]["loss"] == pytest.approx(rows[3]["loss"], abs=1e-4)
    assert all(r["peak_mb"] >= 0 for r in rows)


def test_memory_bench_in_bf16_prepares_as_the_trainer_and_as_accelerate():
    """Both wrappers of --mixed_precision bf16 run in fresh processes (accelerate's state is one per process) and give
    the same loss to the bit: dropping accelerate's float32 copy of the outputs changes no number."""
    shape = ["--device", "cpu", "--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--batch_size", "2", "--seq_len", "32",
             "--mixed_precision", "bf16"]
    rows = {}
    for step in ("train", "eval"):
        for wrapper in ("trainer", "accelerate"):
            done = subprocess.run([sys.executable, str(BENCH / "bench_memory.py"), *shape, "--model", "ours", "--step", step,
                                   "--wrapper", wrapper], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
            rows[step, wrapper] = json.loads(done.stdout.strip().splitlines()[-1])
    for step in ("train", "eval"):
        assert rows[step, "trainer"]["loss"] == rows[step, "accelerate"]["loss"]
        assert [rows[step, w]["wrapper"] for w in ("trainer", "accelerate")] == ["trainer", "accelerate"]
