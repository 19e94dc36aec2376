"""The training loss head alone (lm_head + cross-entropy, forward and backward): peak memory and time, our
GPTForCausalLM's paths against transformers' GPT2LMHeadModel head, at GPT-2's vocabulary.

    python bench/bench_loss.py --tokens 4096 --steps 1 --save            # CPU: 4096 tokens, width 768, fp32
    python bench/bench_loss.py --device cuda --tokens 16384 --dtype bf16  # one GPU: 16 x 1024, bf16 autocast

transformers   GPT2LMHeadModel's head: logits over the 50257 real rows, then ForCausalLMLoss (a float32 copy of the
               logits and its log-softmax)
ours_before    ours at 6866b16: padded logits, -inf written into the padded columns through autograd (whose
               backward copies the whole logits gradient), then ForCausalLMLoss
ours_plain     GPTForCausalLM.loss_and_logits with skip_logits=False (the default): the -inf outside autograd
ours_fused     skip_logits=True (`fused_loss`): Liger Kernel on CUDA where installed, else chunked PyTorch; no logits
Each path runs in a fresh process. Peak = the high-water mark above what the process held before the steps:
torch.cuda.max_memory_allocated on a GPU, the resident set (VmHWM, reset through /proc/self/clear_refs) on a CPU,
where glibc is told to return every block of 64 KiB or more when freed.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.loss.loss_utils import ForCausalLMLoss

import atomic_io
from bench_memory import rss_bytes
from bench_output import SAVE_HELP, results_path
from modeling_gpt import GPTConfig, GPTForCausalLM
from modeling_gpt.loss import liger_fused_linear_cross_entropy

PATHS = ("transformers", "ours_before", "ours_plain", "ours_fused")
# glibc hands blocks this large back to the system when freed, so that the resident set follows the live tensors
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def head_step(path, model, real_head):
    """The function of (hidden, targets) -> loss for `path`."""
    vocab = model.config.vocab_size

    def transformers_head(hidden, targets):
        return ForCausalLMLoss(F.linear(hidden, real_head), None, vocab, shift_labels=targets)

    def before(hidden, targets):
        logits = model.lm_head(hidden)
        logits[..., vocab:] = float("-inf")
        return ForCausalLMLoss(logits, None, logits.shape[-1], shift_labels=targets)

    def ours(hidden, targets):
        return model.loss_and_logits(hidden, targets, path == "ours_fused", shift_labels=targets)[0]

    return {"transformers": transformers_head, "ours_before": before}.get(path, ours)


def one(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = GPTConfig.from_preset("gpt2", n_layer=1, n_embd=args.n_embd, n_head=1)
    model = GPTForCausalLM(config).to(device).train()
    real_head = torch.nn.Parameter(model.lm_head.weight.detach()[: config.vocab_size].clone())
    if args.path == "transformers":
        model.lm_head.weight.requires_grad_(False)
    hidden = torch.randn(1, args.tokens, args.n_embd, device=device, requires_grad=True)
    targets = torch.randint(0, config.vocab_size, (1, args.tokens), device=device)
    step = head_step(args.path, model, real_head)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def run():
        with autocast:
            loss = step(hidden, targets)
        loss.backward()
        return loss

    run()  # warm-up: allocator, kernels, Liger's compilation
    hidden.grad = model.lm_head.weight.grad = real_head.grad = None
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    if device.type == "cuda":
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = rss_bytes("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = run()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() - before if device.type == "cuda" else rss_bytes("VmHWM") - before
    liger = args.path == "ours_fused" and device.type == "cuda" and liger_fused_linear_cross_entropy is not None
    kernel = "liger" if liger else "pytorch"
    return {"path": args.path, "kernel": kernel, "peak_mb": round(peak / 2**20, 1),
            "ms": round(1000 * statistics.median(times), 2), "loss": loss.item()}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=512, help="tokens in the batch (B x T)")
    parser.add_argument("--n_embd", type=int, default=768)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help="JSON path; default out/bench/loss_<device>.json.")
    parser.add_argument("--save", action="store_true", help=SAVE_HELP)
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.path:  # one measurement, in this fresh process
        print(json.dumps(one(args)))
        return
    shape = [f"--{k}={getattr(args, k)}" for k in ("device", "tokens", "n_embd", "dtype", "steps", "threads")]
    rows = []
    for path in PATHS:
        done = subprocess.run([sys.executable, __file__, *shape, "--path", path], capture_output=True, text=True,
                              check=True, env={**os.environ, **MALLOC})
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    reference = rows[0]
    for r in rows:
        r["memory_vs_transformers"] = round(r["peak_mb"] / reference["peak_mb"], 3)
        r["speed_vs_transformers"] = round(reference["ms"] / r["ms"], 3)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"loss head, forward + backward, on {args.device} ({device_name}): {args.tokens} tokens, width "
          f"{args.n_embd}, vocabulary 50257 (padded 50304), {args.dtype}")
    print(f"{'path':<13} {'kernel':<8} {'peak MB':>9} {'mem/theirs':>11} {'ms':>9} {'speed/theirs':>13} {'loss':>8}")
    for r in rows:
        print(f"{r['path']:<13} {r['kernel']:<8} {r['peak_mb']:9.1f} {r['memory_vs_transformers']:11.3f} "
              f"{r['ms']:9.2f} {r['speed_vs_transformers']:13.3f} {r['loss']:8.4f}")
    out = results_path(f"loss_{args.device}.json", args.output, args.save)
    atomic_io.write_json(out, {"device": args.device, "device_name": device_name, "torch": torch.__version__,
                               "settings": {k: getattr(args, k) for k in ("tokens", "n_embd", "dtype", "steps")},
                               "command": "python bench/bench_loss.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                               "rows": rows}, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
