"""One command for a CUDA machine, under 10 minutes: what the CPU cannot measure.

    python bench/gpu_suite.py                        # writes bench/results/gpu_*.json, named after the device
    python bench/gpu_suite.py --dry_run              # the plan, anywhere

Parts (each a separate process, each under its own time limit, the whole under --budget seconds):
  train_gpt2      the gpt2 preset at T=1024, bf16 autocast + torch.compile, ours vs GPT2LMHeadModel: tokens/s, MFU, peak memory
  train_gpt2.5    the same for the gpt2.5 preset (vs LlamaForCausalLM)
  generate        KV-cached generation speed, ours vs GPT2LMHeadModel
  hellaswag       full HellaSwag (10,042 items) through eval.run_tasks: seconds (needs --data_dir with hellaswag/)
  memory          peak memory of a train and an eval step at 16 x 1024, ours vs GPT2LMHeadModel
  fsdp_smoke      2 steps of the gpt2 preset through configs/accelerate/fsdp.yaml on one GPU, a sharded checkpoint
                  and the final export
  train_speedrun  12 steps of configs/speedrun-124m.yaml (Muon, WSD, QK-norm) through the trainer: tokens/s and MFU
                  (on the smoke data's 512-token vocabulary: the blocks' cost, not GPT-2's 50k-wide head)
Needs torch, transformers, accelerate, tiktoken and tokenizers (no datasets): the data of the FSDP smoke is made here.
"""

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import atomic_io

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"


def smoke_data(folder: Path):
    """A data folder for the FSDP smoke without a network: a 512-token byte-level BPE and random shards."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from bench_startup import make_shards

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    text = [" ".join(f"word{(i * j) % 4099}" for j in range(64)) for i in range(200)]
    bpe.train_from_iterator(text, trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    make_shards(folder, 2, 200_000, tokenizer)


def plan(args, device_slug: str, scratch: Path) -> list[tuple[str, int, list[str]]]:
    """(name, time limit in seconds, command) of every part."""
    py = sys.executable
    out = {name: str(RESULTS / f"gpu_{name}_{device_slug}.json") for name in ("train_gpt2", "train_gpt2.5", "generate",
                                                                          "hellaswag", "memory")}
    train = ["--batch_size", "16", "--seq_len", "1024", "--steps", "20", "--warmup", "5", "--dtype", "bf16", "--compile", "true"]
    return [
        ("train_gpt2", 150, [py, str(BENCH / "train_throughput.py"), "--preset", "gpt2", *train, "--output", out["train_gpt2"]]),
        ("train_gpt2.5", 150, [py, str(BENCH / "train_throughput.py"), "--preset", "gpt2.5", *train, "--output", out["train_gpt2.5"]]),
        ("generate", 60, [py, str(BENCH / "generate.py"), "--preset", "gpt2", "--rounds", "2", "--output", out["generate"]]),
        ("hellaswag", 120, [py, str(BENCH / "bench_eval.py"), "--device", "cuda", "--models", "gpt2", "--limits", "0",
                            "--data_dir", args.data_dir, "--output", out["hellaswag"]]),
        ("memory", 60, [py, str(BENCH / "bench_memory.py"), "--device", "cuda", "--n_layer", "12", "--n_embd", "768",
                        "--n_head", "12", "--batch_size", "16", "--seq_len", "1024", "--output", out["memory"]]),
        ("fsdp_smoke", 120, [shutil.which("accelerate") or "accelerate", "launch", "--config_file",
                             str(REPO / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "1",
                             str(REPO / "train_accelerate.py"), "--model_preset", "gpt2", "--data_dir", str(scratch / "data"),
                             "--output_dir", str(scratch / "fsdp"), "--micro_batch_size", "8", "--seq_len", "512",
                             "--total_batch_tokens", "4096", "--max_steps", "2", "--warmup_steps", "1", "--eval_interval", "0",
                             "--save_interval", "2", "--tracker", "none"]),
        ("train_speedrun", 90, [py, str(REPO / "train_accelerate.py"), "--config", str(REPO / "configs" / "speedrun-124m.yaml"),
                                "--data_dir", str(scratch / "data"), "--output_dir", str(scratch / "speedrun"),
                                "--max_steps", "12", "--total_batch_tokens", "65536", "--micro_batch_size", "16",
                                "--warmup_steps", "2", "--eval_interval", "0", "--save_interval", "0", "--hellaswag", "false",
                                "--log_interval", "4", "--tracker", "none"]),
    ]


def check_fsdp_smoke(scratch: Path, output: str) -> dict:
    checkpoint = scratch / "fsdp" / "checkpoints" / "step_0000002"
    return {"ran_as_fsdp": "DistributedType.FSDP" in output,
            "sharded_checkpoint": (checkpoint / "pytorch_model_fsdp_0").is_dir(),
            "final_files": sorted(p.name for p in (scratch / "fsdp" / "final").iterdir()),
            "losses": [json.loads(line)["loss"] for line in (scratch / "fsdp" / "metrics.jsonl").read_text().splitlines()]}


def speedrun_throughput(scratch: Path) -> dict:
    """The trainer's logged tokens/s and MFU after the first logged step (which includes torch.compile)."""
    logged = [r for r in map(json.loads, (scratch / "speedrun" / "metrics.jsonl").read_text().splitlines())
              if "tokens_per_sec" in r][1:]
    return {"tokens_per_sec": [r["tokens_per_sec"] for r in logged], "mfu": [r.get("mfu") for r in logged]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"),
                        help="Folder laid out like ../shared/data (hellaswag/, gpt2-tokenizer/, tiktoken-cache/).")
    parser.add_argument("--budget", type=int, default=570, help="Seconds for the whole suite.")
    parser.add_argument("--only", default=None, help="Comma-separated part names to run.")
    parser.add_argument("--dry_run", action="store_true", help="Print the parts and their commands; run nothing.")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("gpu_suite: no CUDA device (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU, "
                 "or pass --dry_run to see the plan")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        parts = [p for p in plan(args, slug, scratch) if args.only is None or p[0] in args.only.split(",")]
        if args.dry_run:
            for name, limit, cmd in parts:
                print(f"{name} (<= {limit} s): {' '.join(cmd)}")
            return parts
        smoke_data(scratch / "data")
        report = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "host": platform.node(),
                  "parts": {}}
        deadline = time.monotonic() + args.budget
        for name, limit, cmd in parts:
            left = deadline - time.monotonic()
            if name == "hellaswag" and not (Path(args.data_dir) / "hellaswag" / "hellaswag_val.jsonl").is_file():
                report["parts"][name] = {"status": "skipped", "reason": f"no hellaswag/hellaswag_val.jsonl in {args.data_dir}"}
                continue
            if left < 10:
                report["parts"][name] = {"status": "skipped", "reason": f"the {args.budget} s budget is spent"}
                continue
            start = time.monotonic()
            try:
                done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=min(limit, left))
                status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
                output, tail = done.stdout, (done.stdout + done.stderr)[-4000:]
            except subprocess.TimeoutExpired as err:
                status, tail = "timeout", str(err)[-4000:]
            part = {"status": status, "seconds": round(time.monotonic() - start, 1), "command": " ".join(cmd), "output_tail": tail}
            if status == "ok" and name == "fsdp_smoke":
                part.update(check_fsdp_smoke(scratch, output))
                if not (part["ran_as_fsdp"] and part["sharded_checkpoint"]):
                    part["status"] = "failed (not FSDP, or no sharded checkpoint)"
            if status == "ok" and name == "train_speedrun":
                part.update(speedrun_throughput(scratch))
            report["parts"][name] = part
            print(f"{name:<14} {status:<20} {part['seconds']:7.1f} s", flush=True)
    out = RESULTS / f"gpu_suite_{slug}.json"
    atomic_io.write_json(out, report, indent=2)
    print(f"wrote {out} (and bench/results/gpu_<part>_{slug}.json per part)")
    return report


if __name__ == "__main__":
    main()
