"""Peak memory of one training step and one evaluation step: our GPTForCausalLM against transformers'
GPT2LMHeadModel holding the same weights, on the same batch.

    python bench/bench_memory.py --save                     # CPU: 4 layers, width 256, GPT-2's vocabulary, 8 x 512
    python bench/bench_memory.py --device cuda --n_layer 12 --n_embd 768 --n_head 12 --batch_size 16 --seq_len 1024
    python bench/bench_memory.py --mixed_precision bf16 --output bench/results/memory_cpu_bf16.json

train  forward with labels, backward, AdamW step (both models compute their own loss)
eval   the validation loss of one batch: ours through eval.mean_loss (the trainer's, float32 cross-entropy a few
       rows at a time), theirs as transformers computes it (model(x, labels=y).loss: the whole batch's logits in
       float32, then its log-softmax)
--mixed_precision bf16: every model prepared by accelerate in bf16 as gpt-train prepares it (accelerate's autocast,
without its float32 copy of every output: train_accelerate.autocast_only), and our model once more as accelerate
alone prepares it (autocast, then every output in float32), for the ratio of the two.
Each measurement runs in a fresh process. Peak = the step's high-water mark above what the process held before it:
torch.cuda.max_memory_allocated on a GPU, the resident set (VmHWM, reset through /proc/self/clear_refs) on a CPU.
"""

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

import atomic_io
from bench_output import SAVE_HELP, results_path
from eval import mean_loss
from modeling_gpt import GPTConfig, GPTForCausalLM
from train_accelerate import autocast_only



def rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def one(args) -> dict:
    """Build the model and batch, then measure one step's peak above that."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = GPTConfig.from_preset("gpt2", n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                                   n_positions=args.seq_len)
    model = GPTForCausalLM(config)
    if args.model == "transformers":
        model = model.to_hf_native()
    model.to(device).train(args.step == "train")
    if args.mixed_precision == "bf16":
        accelerator = Accelerator(mixed_precision="bf16", cpu=device.type == "cpu")
        model = accelerator.prepare(model)
        if args.wrapper == "trainer":
            autocast_only(accelerator, model)
    x = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len + 1), generator=torch.Generator().manual_seed(1))
    inputs, targets = x[:, :-1].contiguous().to(device), x[:, 1:].contiguous().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if args.step == "train" else None

    def step():
        if args.step == "train":
            loss = model(input_ids=inputs, labels=targets, shift_labels=targets).loss
            loss.backward()
            optimizer.step()
        elif args.model == "ours":
            loss = torch.tensor(mean_loss(model, OneBatch(inputs, targets), 1))
        else:
            with torch.no_grad():
                loss = model(input_ids=inputs, labels=targets, shift_labels=targets).loss
        return loss.item()

    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss = step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        before = rss_bytes("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        loss = step()
        peak = rss_bytes("VmHWM") - before
    return {"model": args.model, "class": type(model).__name__, "step": args.step, "wrapper": args.wrapper,
            "peak_mb": round(peak / 2**20, 1), "loss": loss}


class OneBatch:
    """The one batch, in the shape of a token_shards.ShardDataLoader as eval.mean_loss reads it."""

    def __init__(self, inputs, targets):
        self.batch, self.batch_size, self.seq_len, self.chunks_per_epoch = (inputs, targets), *inputs.shape, 1

    def reset(self):
        pass

    def next_batch(self):
        return self.batch


def cell(ratio) -> str:
    return "-" if ratio is None else f"{ratio:.3f}"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--n_embd", type=int, default=256)
    parser.add_argument("--n_head", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--mixed_precision", choices=["no", "bf16"], default="no",
                        help="bf16: the models prepared by accelerate, as gpt-train prepares them (see above)")
    parser.add_argument("--model", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--wrapper", choices=["trainer", "accelerate"], default="trainer", help=argparse.SUPPRESS)
    parser.add_argument("--step", choices=["train", "eval"], help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help="JSON path; default out/bench/memory_<device>.json.")
    parser.add_argument("--save", action="store_true", help=SAVE_HELP)
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.model:  # one measurement, in this fresh process
        print(json.dumps(one(args)))
        return
    shape = [f"--{k}={getattr(args, k)}"
             for k in ("device", "n_layer", "n_embd", "n_head", "batch_size", "seq_len", "mixed_precision")]
    runs = [(step, model, "trainer") for step in ("train", "eval") for model in ("ours", "transformers")]
    if args.mixed_precision == "bf16":
        runs += [(step, "ours", "accelerate") for step in ("train", "eval")]
    rows = []
    for step, model, wrapper in runs:
        done = subprocess.run([sys.executable, __file__, *shape, "--model", model, "--step", step, "--wrapper", wrapper],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    for step in ("train", "eval"):
        ours, theirs = (r for r in rows[:4] if r["step"] == step)
        ours["ratio_ours_vs_transformers"] = theirs["ratio_ours_vs_transformers"] = round(ours["peak_mb"] / theirs["peak_mb"], 3)
        for r in rows[4:]:
            if r["step"] == step:
                r["ratio_trainer_vs_accelerate"] = ours["ratio_trainer_vs_accelerate"] = round(ours["peak_mb"] / r["peak_mb"], 3)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"peak memory of one step on {args.device} ({device_name}): {args.n_layer} layers, width {args.n_embd}, "
          f"vocabulary 50257, batch {args.batch_size} x {args.seq_len}")
    print(f"{'step':<6} {'model':<16} {'prepared as':<11} {'peak MB':>9} {'ours/theirs':>12} {'trainer/accelerate':>19} "
          f"{'loss':>8}")
    for r in rows:
        print(f"{r['step']:<6} {r['class']:<16} {r['wrapper'] if args.mixed_precision == 'bf16' else '-':<11} "
              f"{r['peak_mb']:9.1f} {cell(r.get('ratio_ours_vs_transformers')):>12} "
              f"{cell(r.get('ratio_trainer_vs_accelerate')):>19} {r['loss']:8.4f}")
    out = results_path(f"memory_{args.device}.json", args.output, args.save)
    atomic_io.write_json(out, {"device": args.device, "device_name": device_name, "torch": torch.__version__,
                               "settings": {k: getattr(args, k) for k in ("n_layer", "n_embd", "n_head", "batch_size", "seq_len",
                                                                         "mixed_precision")},
                               "command": "python bench/bench_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                               "rows": rows}, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
