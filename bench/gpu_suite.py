"""One command for a CUDA machine, at most 10 minutes: what the CPU cannot measure, against the targets.

    python bench/gpu_suite.py              # bench/results/gpu_suite_<device>.json (+ gpu_<part>_<device>.json)
    python bench/gpu_suite.py --dry_run    # the plan and its time limits, anywhere

Parts (each a separate process under its own time limit; the limits add up to at most --budget, so that every part
gets its whole limit however the others fare; one stopped at its limit keeps the models and trainer steps it had
finished). 124M GPT-2 geometry, T=1024, bf16 autocast + torch.compile, the trainer's micro-loop (64 sequences x 8
micro-batches per optimizer step) on random tokens of GPT-2's vocabulary:
  trainer_gpt2     gpt-train --config configs/gpt2-124m.yaml itself: tokens/s and MFU from its log
  bench_gpt2       bench/train_throughput.py: ours vs the plain PyTorch reference vs GPT2LMHeadModel, sdpa's own
                   choice of kernel; tokens/s, MFU, peak memory per row
  bench_gpt2_flash the same with the flash kernel forced (a model that hands sdpa a mask gets an error row)
  bench_gpt2_fp8   ours with float8 blocks (torchao), against bench_gpt2's ours
  bench_gpt2.5     the modern preset: ours vs LlamaForCausalLM
  generate         KV-cached generation, ours vs GPT2LMHeadModel
  hellaswag        2,000 HellaSwag items through eval.run_tasks: items/s and the full 10,042's time (needs
                   --data_dir with hellaswag/)
  fsdp_smoke       2 steps through configs/accelerate/fsdp.yaml on one GPU, a sharded checkpoint, the final export
  trainer_speedrun configs/speedrun-124m.yaml (Muon, WSD, QK-norm) through gpt-train: tokens/s and MFU
Prints one table of rows, ratios and the targets (trainer >= 1.10x the plain reference, >= 1.25x GPT2LMHeadModel,
>= 50% MFU; float8 >= 1.2x bf16), each pass / fail / not measured. Needs torch, transformers, accelerate and
tokenizers (not datasets; torchao for the float8 row): the data is made here.
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
from statistics import median

import torch

import atomic_io

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
VOCAB = 50257  # GPT-2's: the head's cost is part of what is measured
THROUGHPUT = ("bench_gpt2", "bench_gpt2_flash", "bench_gpt2_fp8", "bench_gpt2.5")
# (target, measured as, at least)
TARGETS = (("trainer / plain reference", "trainer_vs_plain", 1.10),
           ("trainer / GPT2LMHeadModel", "trainer_vs_transformers", 1.25),
           ("trainer MFU", "trainer_mfu", 0.50),
           ("ours float8 / ours bf16", "fp8_vs_bf16", 1.20))


def smoke_data(folder: Path, vocab_size: int = VOCAB, tokens_per_shard: int = 2_000_000):
    """A data folder without a network: a word-level tokenizer of `vocab_size` ids (`<|endoftext|>` the last, as in
    GPT-2), three train shards and one val shard of random ids with a manifest, as gpt-tokenize writes them."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from bench_startup import make_shards

    vocab = {f"t{i}": i for i in range(vocab_size - 1)} | {"<|endoftext|>": vocab_size - 1}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    make_shards(folder, 3, tokens_per_shard, tokenizer)


def trainer_flags(scratch: Path, name: str, steps: int) -> list[str]:
    return ["--data_dir", str(scratch / "data"), "--output_dir", str(scratch / name), "--max_steps", str(steps),
            "--warmup_steps", "2", "--eval_interval", "0", "--save_interval", "0", "--hellaswag", "false",
            "--log_interval", "1", "--tracker", "none"]


def plan(args, device_slug: str, scratch: Path) -> list[tuple[str, int, list[str]]]:
    """(name, time limit in seconds, command) of every part, in the order they run."""
    py = sys.executable
    out = {name: str(RESULTS / f"gpu_{name}_{device_slug}.json") for name in (*THROUGHPUT, "generate", "hellaswag")}
    loop = ["--batch_size", "64", "--grad_accum", "8", "--seq_len", "1024", "--steps", "2", "--warmup", "1",
            "--rounds", "1", "--dtype", "bf16", "--compile", "true"]

    def throughput(name, preset, models, backend):
        return [py, str(BENCH / "train_throughput.py"), "--preset", preset, "--models", models, *loop,
                "--sdpa_backend", backend, "--output", out[name]]

    train = [py, str(REPO / "train_accelerate.py")]
    return [
        ("trainer_gpt2", 90, [*train, "--config", str(REPO / "configs" / "gpt2-124m.yaml"),
                              *trainer_flags(scratch, "trainer_gpt2", 8)]),
        ("bench_gpt2", 130, throughput("bench_gpt2", "gpt2", "ours,plain,transformers", "auto")),
        ("bench_gpt2_flash", 55, throughput("bench_gpt2_flash", "gpt2", "ours,plain,transformers", "flash")),
        ("bench_gpt2_fp8", 55, throughput("bench_gpt2_fp8", "gpt2", "ours-fp8", "auto")),
        ("bench_gpt2.5", 85, throughput("bench_gpt2.5", "gpt2.5", "ours,transformers", "auto")),
        ("generate", 35, [py, str(BENCH / "generate.py"), "--preset", "gpt2", "--rounds", "2", "--output", out["generate"]]),
        ("hellaswag", 45, [py, str(BENCH / "bench_eval.py"), "--device", "cuda", "--models", "gpt2", "--limits", "2000",
                           "--data_dir", args.data_dir, "--output", out["hellaswag"]]),
        ("fsdp_smoke", 40, [shutil.which("accelerate") or "accelerate", "launch", "--config_file",
                            str(REPO / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "1",
                            str(REPO / "train_accelerate.py"), "--model_preset", "gpt2", "--data_dir", str(scratch / "data"),
                            "--output_dir", str(scratch / "fsdp"), "--micro_batch_size", "8", "--seq_len", "512",
                            "--total_batch_tokens", "4096", "--max_steps", "2", "--warmup_steps", "1", "--eval_interval", "0",
                            "--save_interval", "2", "--tracker", "none"]),
        ("trainer_speedrun", 55, [*train, "--config", str(REPO / "configs" / "speedrun-124m.yaml"),
                                  *trainer_flags(scratch, "trainer_speedrun", 12), "--total_batch_tokens", "65536",
                                  "--micro_batch_size", "16"]),
    ]


def check_fsdp_smoke(scratch: Path) -> dict:
    checkpoint = scratch / "fsdp" / "checkpoints" / "step_0000002"
    return {"sharded_checkpoint": (checkpoint / "pytorch_model_fsdp_0").is_dir(),
            "final_files": sorted(p.name for p in (scratch / "fsdp" / "final").iterdir()),
            "losses": [json.loads(line)["loss"] for line in (scratch / "fsdp" / "metrics.jsonl").read_text().splitlines()]}


def trainer_throughput(run_dir: Path) -> dict:
    """The trainer's logged tokens/s and MFU, leaving out the first two logged steps (compilation, warm-up)."""
    logged = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if "tokens_per_sec" in r][2:]
    if not logged:
        return {"tokens_per_sec": None, "mfu": None}
    mfus = [r["mfu"] for r in logged if r.get("mfu") is not None]
    return {"tokens_per_sec": median(r["tokens_per_sec"] for r in logged), "mfu": median(mfus) if mfus else None,
            "steps_timed": len(logged)}


def collect(name: str, scratch: Path, plan_out: dict, output: str) -> dict:
    """What a finished part measured, read from the files it wrote."""
    if name in ("trainer_gpt2", "trainer_speedrun"):
        return trainer_throughput(scratch / name)
    if name == "fsdp_smoke":
        return check_fsdp_smoke(scratch) | {"ran_as_fsdp": "DistributedType.FSDP" in output}
    result = json.loads(Path(plan_out[name]).read_text())
    if name in THROUGHPUT:
        return {"rows": result["results"], "ratios": result["ratios"]}
    return {"result": result}


def model_row(parts: dict, part: str, model: str) -> dict:
    rows = parts.get(part, {}).get("rows") or []
    return next((r for r in rows if r["model"] == model), {})


def ratio(a, b):
    return a / b if a and b else None


def summarize(parts: dict) -> dict:
    """The table's rows and the targets, pass or fail, from the parts' measurements (missing ones: not measured)."""
    trainer = parts.get("trainer_gpt2", {})
    rows = [{"row": "gpt-train, configs/gpt2-124m.yaml", "tokens_per_s": trainer.get("tokens_per_sec"),
             "mfu": trainer.get("mfu")}]
    for part, label in (("bench_gpt2", "gpt2, sdpa auto"), ("bench_gpt2_flash", "gpt2, flash forced"),
                        ("bench_gpt2_fp8", "gpt2, float8"), ("bench_gpt2.5", "gpt2.5, sdpa auto")):
        for r in parts.get(part, {}).get("rows") or []:
            rows.append({"row": f"{label}: {r['model']} ({r['class']})", "tokens_per_s": r.get("tokens_per_s"),
                         "mfu": r.get("mfu"), "peak_memory_gb": r.get("peak_memory_gb"), "error": r.get("error")})
    speedrun = parts.get("trainer_speedrun", {})
    rows.append({"row": "gpt-train, configs/speedrun-124m.yaml", "tokens_per_s": speedrun.get("tokens_per_sec"),
                 "mfu": speedrun.get("mfu")})
    tps = trainer.get("tokens_per_sec")
    measured = {
        "trainer_vs_plain": ratio(tps, model_row(parts, "bench_gpt2", "plain").get("tokens_per_s")),
        "trainer_vs_transformers": ratio(tps, model_row(parts, "bench_gpt2", "transformers").get("tokens_per_s")),
        "trainer_mfu": trainer.get("mfu"),
        "fp8_vs_bf16": ratio(model_row(parts, "bench_gpt2_fp8", "ours-fp8").get("tokens_per_s"),
                             model_row(parts, "bench_gpt2", "ours").get("tokens_per_s")),
    }
    targets = [{"target": label, "at_least": least, "measured": measured[key],
                "verdict": "not measured" if measured[key] is None else ("pass" if measured[key] >= least else "fail")}
               for label, key, least in TARGETS]
    ratios = {f"{part}: {pair}": value for part in THROUGHPUT for pair, value in (parts.get(part, {}).get("ratios") or {}).items()}
    return {"rows": rows, "ratios": ratios, "targets": targets}


def cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_summary(summary: dict):
    width = max(len(r["row"]) for r in summary["rows"])
    print(f"{'':<{width}}  {'tokens/s':>10}  {'MFU':>6}  {'peak GiB':>8}")
    for r in summary["rows"]:
        line = (f"{r['row']:<{width}}  {cell(r['tokens_per_s'], ',.0f'):>10}  {cell(r['mfu'], '.1%'):>6}  "
                f"{cell(r.get('peak_memory_gb'), '.1f'):>8}")
        print(line + (f"  {r['error']}" if r.get("error") else ""))
    for pair, value in summary["ratios"].items():
        print(f"{pair}: {cell(value, '.3f')}x")
    for t in summary["targets"]:
        print(f"target {t['target']} >= {t['at_least']:g}: {cell(t['measured'], '.3f')} -> {t['verdict']}")


def finished_before_timeout(name: str, scratch: Path, plan_out: dict, started: float) -> dict:
    """What a part killed at its limit had measured: the benchmarks' rows written so far (train_throughput writes
    them after every model), the trainer's logged steps; nothing for the other parts."""
    if name in ("trainer_gpt2", "trainer_speedrun") and (scratch / name / "metrics.jsonl").is_file():
        return trainer_throughput(scratch / name)
    written = Path(plan_out.get(name, ""))
    if name in THROUGHPUT and written.is_file() and written.stat().st_mtime >= started:  # this run's, not an older one
        return collect(name, scratch, plan_out, "")
    return {}


def run_part(name: str, limit: int, cmd: list[str], left: float, scratch: Path, plan_out: dict) -> dict:
    start, started = time.monotonic(), time.time()
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(1.0, min(limit, left)))
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        output, tail = done.stdout + done.stderr, (done.stdout + done.stderr)[-4000:]
    except subprocess.TimeoutExpired as err:
        status, output, tail = f"timeout (over its {limit} s)", "", str(err)[-4000:]
    part = {"status": status, "seconds": round(time.monotonic() - start, 1), "limit_s": limit,
            "command": " ".join(cmd), "output_tail": tail}
    if status == "ok":
        part.update(collect(name, scratch, plan_out, output))
        if name == "fsdp_smoke" and not (part["ran_as_fsdp"] and part["sharded_checkpoint"]):
            part["status"] = "failed (not FSDP, or no sharded checkpoint)"
    elif status.startswith("timeout"):
        part.update(finished_before_timeout(name, scratch, plan_out, started))
    return part


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"),
                        help="Folder laid out like ../shared/data (hellaswag/, gpt2-tokenizer/, tiktoken-cache/).")
    parser.add_argument("--budget", type=int, default=590, help="Seconds for the whole suite (its parts' limits fit in it).")
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
        total = sum(limit for _, limit, _ in parts)
        if total > args.budget:
            sys.exit(f"gpu_suite: the parts' limits add up to {total} s, over --budget {args.budget} s: "
                     f"raise --budget or pick parts with --only")
        if args.dry_run:
            for name, limit, cmd in parts:
                print(f"{name} (<= {limit} s): {' '.join(cmd)}")
            print(f"{len(parts)} parts, at most {total} s in all (--budget {args.budget} s)")
            return parts
        smoke_data(scratch / "data")
        plan_out = {name: cmd[cmd.index("--output") + 1] for name, _, cmd in parts if "--output" in cmd}
        report = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "host": platform.node(),
                  "parts": {}}
        deadline = time.monotonic() + args.budget
        for name, limit, cmd in parts:
            if name == "hellaswag" and not (Path(args.data_dir) / "hellaswag" / "hellaswag_val.jsonl").is_file():
                report["parts"][name] = {"status": "skipped", "reason": f"no hellaswag/hellaswag_val.jsonl in {args.data_dir}"}
                continue
            report["parts"][name] = part = run_part(name, limit, cmd, deadline - time.monotonic(), scratch, plan_out)
            print(f"{name:<17} {part['status']:<24} {part['seconds']:7.1f} s (limit {limit} s)", flush=True)
    report["summary"] = summarize(report["parts"])
    print_summary(report["summary"])
    out = RESULTS / f"gpu_suite_{slug}.json"
    atomic_io.write_json(out, report, indent=2)
    print(f"wrote {out} (and bench/results/gpu_<part>_{slug}.json per benchmark part)")
    return report


if __name__ == "__main__":
    main()
