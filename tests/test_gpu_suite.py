"""bench/gpu_suite.py where there is no GPU: a clear refusal, a plan whose every command parses, the FSDP smoke's
data made without a network, and no import of datasets anywhere on its path."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import HfArgumentParser

import token_shards
import train_accelerate as ta

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))  # the scripts import each other as they do when run from bench/
import bench_eval  # noqa: E402
import bench_memory  # noqa: E402
import generate  # noqa: E402
import gpu_suite  # noqa: E402
import train_throughput  # noqa: E402

# a GPU machine has torch, transformers, accelerate, tiktoken and tokenizers, not datasets (nor evaluate, built on it)
WITHOUT_DATASETS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("datasets", "evaluate"):
            raise ImportError(name + " is not installed on this machine")
sys.meta_path.insert(0, Block())
sys.path.insert(0, {bench!r})
import train_accelerate, eval, token_shards, atomic_io, modeling_gpt
import gpu_suite, train_throughput, generate, bench_eval, bench_memory, bench_startup
sys.argv = ["gpu_suite.py"]
gpu_suite.main()
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda_and_needs_no_datasets():
    done = subprocess.run([sys.executable, "-c", WITHOUT_DATASETS.format(bench=str(BENCH))], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "gpu_suite: no CUDA device (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU, "
        "or pass --dry_run to see the plan")


def test_every_command_of_the_plan_parses_and_fits_the_budget(tmp_path):
    parts = gpu_suite.plan(gpu_suite.argparse.Namespace(data_dir="/data"), "nvidia-h100", tmp_path)
    assert [p[0] for p in parts] == ["trainer_gpt2", "bench_gpt2", "bench_gpt2_flash", "bench_gpt2_fp8", "bench_gpt2.5",
                                     "generate", "hellaswag", "fsdp_smoke", "trainer_speedrun"]
    # every part gets its whole limit: the limits add up to the default budget, inside one 10-minute command
    assert sum(limit for _, limit, _ in parts) <= 590
    parsers = {"train_throughput.py": train_throughput.TrainBenchArguments, "generate.py": generate.GenerateBenchArguments,
               "bench_eval.py": bench_eval.BenchArguments}
    throughput = {}
    for name, _, cmd in parts:
        script = Path(cmd[1]) if name != "fsdp_smoke" else Path(cmd[cmd.index("--num_processes") + 2])
        assert script.is_file(), script
        argv = cmd[2:] if name != "fsdp_smoke" else cmd[cmd.index("--num_processes") + 3:]
        if script.name in parsers:
            (parsed,) = HfArgumentParser(parsers[script.name]).parse_args_into_dataclasses(args=argv)
            assert parsed.output.endswith(f"gpu_{name}_nvidia-h100.json")
            if script.name == "train_throughput.py":
                throughput[name] = parsed
        elif name == "fsdp_smoke":
            model_args, data_args, args = ta.parse_args(argv)
            assert (model_args.model_preset, args.max_steps, data_args.data_dir) == ("gpt2", 2, str(tmp_path / "data"))
            assert cmd[cmd.index("--config_file") + 1] == str(REPO / "configs" / "accelerate" / "fsdp.yaml")
        else:
            model_args, data_args, args = ta.parse_args(argv)
            assert data_args.data_dir == str(tmp_path / "data") and not args.hellaswag and args.eval_interval == 0
            if name == "trainer_gpt2":  # the shipped 124M recipe, only shortened
                assert (model_args.model_preset, args.micro_batch_size, args.seq_len, args.total_batch_tokens,
                        args.mixed_precision, args.compile, args.max_steps) == ("gpt2", 64, 1024, 524288, "bf16", True, 8)
            else:
                assert (model_args.model_preset, model_args.qk_norm, args.optimizer, args.lr_schedule, args.max_steps) == (
                    "gpt2.5", True, "muon", "wsd", 12)
    assert {name: (p.preset, p.models, p.sdpa_backend) for name, p in throughput.items()} == {
        "bench_gpt2": ("gpt2", "ours,plain,transformers", "auto"),
        "bench_gpt2_flash": ("gpt2", "ours,plain,transformers", "flash"),
        "bench_gpt2_fp8": ("gpt2", "ours-fp8", "auto"),
        "bench_gpt2.5": ("gpt2.5", "ours,transformers", "auto")}
    # the trainer's micro-loop: 64 x 1024 tokens, 8 micro-batches per optimizer step, bf16 + compile
    assert all((p.batch_size, p.grad_accum, p.seq_len, p.dtype, p.compile) == (64, 8, 1024, "bf16", True)
               for p in throughput.values())


def test_dry_run_prints_the_plan_and_refuses_limits_over_the_budget():
    done = subprocess.run([sys.executable, str(BENCH / "gpu_suite.py"), "--dry_run"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("trainer_gpt2 (<= 90 s): ") and lines[-1] == "9 parts, at most 590 s in all (--budget 590 s)"
    with pytest.raises(SystemExit, match="the parts' limits add up to 590 s, over --budget 300 s"):
        gpu_suite.main(["--dry_run", "--budget", "300"])


def test_fsdp_smoke_data_is_made_offline_with_gpt2s_vocabulary(tmp_path):
    gpu_suite.smoke_data(tmp_path, tokens_per_shard=20_000)
    tokenizer = token_shards.load_tokenizer(tmp_path)
    assert len(tokenizer) == 50257 and token_shards.eot_id(tokenizer) == 50256
    token_shards.verify_shards(tmp_path)
    loader = token_shards.ShardDataLoader(tmp_path, batch_size=8, seq_len=512, vocab_size=50257, eot_id=50256,
                                          tokenizer_hash=token_shards.tokenizer_hash(tokenizer))
    x, y = loader.next_batch()
    assert x.shape == (8, 512) and int(x.max()) < 50257


def rows(*models):
    return [{"model": m, "class": c, "tokens_per_s": t, "mfu": t / 1e6, "peak_memory_gb": 40.0} for m, c, t in models]


def test_summary_reads_the_targets_off_the_parts(capsys):
    parts = {
        "trainer_gpt2": {"tokens_per_sec": 550_000.0, "mfu": 0.52},
        "bench_gpt2": {"rows": rows(("ours", "GPTForCausalLM", 540_000.0), ("plain", "PlainGPT", 520_000.0),
                                    ("transformers", "GPT2LMHeadModel", 400_000.0)),
                       "ratios": {"ours/plain": 540 / 520, "ours/transformers": 1.35}},
        "bench_gpt2_flash": {"rows": [{"model": "transformers", "class": "GPT2LMHeadModel",
                                       "error": "RuntimeError: No available kernel. Aborting execution."}],
                             "ratios": {"ours/transformers": None}},
    }
    summary = gpu_suite.summarize(parts)
    verdicts = {t["target"]: (t["measured"], t["verdict"]) for t in summary["targets"]}
    assert verdicts["trainer / plain reference"] == (pytest.approx(550 / 520), "fail")  # 1.058 < 1.10
    assert verdicts["trainer / GPT2LMHeadModel"] == (pytest.approx(1.375), "pass")
    assert verdicts["trainer MFU"] == (0.52, "pass")
    assert verdicts["ours float8 / ours bf16"] == (None, "not measured")  # no float8 part ran
    assert summary["ratios"]["bench_gpt2: ours/transformers"] == 1.35
    gpu_suite.print_summary(summary)
    out = capsys.readouterr().out
    assert "gpt2, flash forced: transformers (GPT2LMHeadModel)" in out and "No available kernel" in out
    assert "target trainer / plain reference >= 1.1: 1.058 -> fail" in out
    assert "target ours float8 / ours bf16 >= 1.2: - -> not measured" in out


def test_a_part_is_read_back_and_one_over_its_limit_times_out(tmp_path):
    result = tmp_path / "gpu_bench_gpt2_x.json"
    write = (f"import json; json.dump({{'results': [{{'model': 'ours', 'class': 'GPTForCausalLM', 'tokens_per_s': 5.0}}],"
             f" 'ratios': {{}}}}, open({str(result)!r}, 'w'))")
    part = gpu_suite.run_part("bench_gpt2", 60, [sys.executable, "-c", write], 600, tmp_path,
                              {"bench_gpt2": str(result)})
    assert part["status"] == "ok" and part["rows"][0]["tokens_per_s"] == 5.0
    slow = gpu_suite.run_part("generate", 1, [sys.executable, "-c", "import time; time.sleep(30)"], 600, tmp_path, {})
    assert slow["status"] == "timeout (over its 1 s)" and slow["seconds"] < 10
    failed = gpu_suite.run_part("generate", 60, [sys.executable, "-c", "raise SystemExit(3)"], 600, tmp_path, {})
    assert failed["status"] == "failed (exit 3)" and "rows" not in failed


def test_a_part_over_its_limit_keeps_the_rows_it_wrote_and_never_an_older_file(tmp_path):
    result = tmp_path / "gpu_bench_gpt2_x.json"
    write_then_hang = (f"import json, time; json.dump({{'results': [{{'model': 'ours', 'class': 'GPTForCausalLM', "
                       f"'tokens_per_s': 5.0}}], 'ratios': {{}}}}, open({str(result)!r}, 'w')); time.sleep(30)")
    part = gpu_suite.run_part("bench_gpt2", 3, [sys.executable, "-c", write_then_hang], 600, tmp_path,
                              {"bench_gpt2": str(result)})
    assert part["status"] == "timeout (over its 3 s)" and part["rows"][0]["tokens_per_s"] == 5.0
    hang = gpu_suite.run_part("bench_gpt2", 1, [sys.executable, "-c", "import time; time.sleep(30)"], 600, tmp_path,
                              {"bench_gpt2": str(result)})  # the file is the earlier part's: not this one's rows
    assert hang["status"] == "timeout (over its 1 s)" and "rows" not in hang
    run = tmp_path / "trainer_gpt2"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "tokens_per_sec": 100.0 * s, "mfu": 0.1 * s}) + "\n"
                                               for s in range(1, 5)))
    trainer = gpu_suite.run_part("trainer_gpt2", 1, [sys.executable, "-c", "import time; time.sleep(30)"], 600, tmp_path, {})
    assert trainer["status"] == "timeout (over its 1 s)"
    assert trainer["tokens_per_sec"] == 350.0 and trainer["steps_timed"] == 2  # steps 3 and 4: the first two compile
