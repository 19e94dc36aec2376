"""bench/gpu_suite.py where there is no GPU: a clear refusal, a plan whose every command parses, the FSDP smoke's
data made without a network, and no import of datasets anywhere on its path."""

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


def test_every_command_of_the_plan_parses(tmp_path):
    parts = gpu_suite.plan(gpu_suite.argparse.Namespace(data_dir="/data"), "nvidia-h100", tmp_path)
    assert [p[0] for p in parts] == ["train_gpt2", "train_gpt2.5", "generate", "hellaswag", "memory", "fsdp_smoke",
                                     "train_speedrun"]
    assert sum(limit for _, limit, _ in parts) <= 750  # each part's ceiling; the suite's budget (570 s) bounds the sum
    parsers = {"train_throughput.py": train_throughput.TrainBenchArguments, "generate.py": generate.GenerateBenchArguments,
               "bench_eval.py": bench_eval.BenchArguments}
    for name, _, cmd in parts:
        script = Path(cmd[1]) if name != "fsdp_smoke" else Path(cmd[cmd.index("--num_processes") + 2])
        assert script.is_file(), script
        argv = cmd[2:] if name != "fsdp_smoke" else cmd[cmd.index("--num_processes") + 3:]
        if script.name in parsers:
            (parsed,) = HfArgumentParser(parsers[script.name]).parse_args_into_dataclasses(args=argv)
            assert parsed.output.endswith(f"gpu_{name}_nvidia-h100.json")
        elif script.name == "bench_memory.py":
            assert bench_memory.make_parser().parse_args(argv).device == "cuda"
        elif name == "train_speedrun":
            model_args, data_args, args = ta.parse_args(argv)
            assert (model_args.model_preset, model_args.qk_norm, args.optimizer, args.lr_schedule, args.max_steps) == (
                "gpt2.5", True, "muon", "wsd", 12)
        else:
            model_args, data_args, args = ta.parse_args(argv)
            assert (model_args.model_preset, args.max_steps, data_args.data_dir) == ("gpt2", 2, str(tmp_path / "data"))
            assert cmd[cmd.index("--config_file") + 1] == str(REPO / "configs" / "accelerate" / "fsdp.yaml")
    tt_args = HfArgumentParser(train_throughput.TrainBenchArguments).parse_args_into_dataclasses(args=parts[0][2][2:])[0]
    assert (tt_args.preset, tt_args.seq_len, tt_args.dtype, tt_args.compile) == ("gpt2", 1024, "bf16", True)


def test_fsdp_smoke_data_is_made_offline(tmp_path):
    gpu_suite.smoke_data(tmp_path)
    tokenizer = token_shards.load_tokenizer(tmp_path)
    assert len(tokenizer) == 512 and token_shards.eot_id(tokenizer) == 0
    token_shards.verify_shards(tmp_path)
    loader = token_shards.ShardDataLoader(tmp_path, batch_size=8, seq_len=512, vocab_size=512, eot_id=0,
                                          tokenizer_hash=token_shards.tokenizer_hash(tokenizer))
    x, y = loader.next_batch()
    assert x.shape == (8, 512) and int(x.max()) < 512
