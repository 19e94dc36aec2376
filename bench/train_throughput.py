"""Training throughput of the training step (micro-steps of forward + backward, then AdamW): our GPTForCausalLM
against transformers' own model and a plain PyTorch GPT-2.

The models hold the same weights (transformers' is converted with `to_hf_native()`: GPT2LMHeadModel for the
classic presets, LlamaForCausalLM for gpt2.5; `plain` is bench/reference_gpt.py, classic presets only; `ours-fp8`
is ours with the blocks' linear layers in float8 through torchao, as `gpt-train --fp8 true`), use sdpa attention,
and run the same batches through the same loop in one process. A model that fails (a kernel refused under a forced
sdpa backend, out of memory) gets a row saying why and the others still run. Prints a table and writes JSON
(tokens/s, step time, MFU, peak memory, losses, the ratios of ours to each other model).

    # one GPU (the documented run): bf16 autocast, torch.compile, flash sdpa, fused AdamW
    python bench/train_throughput.py --preset gpt2 --batch_size 32 --seq_len 1024
    # this CPU: a small model in fp32
    python bench/train_throughput.py --preset gpt2 --n_layer 4 --n_embd 256 --n_head 4 --seq_len 256 \
        --batch_size 4 --threads 1 --output out/bench/train_cpu_small.json
"""

import contextlib
import copy
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import HfArgumentParser

import atomic_io
from bench_output import SAVE_HELP, results_path
from modeling_gpt import GPTConfig, GPTForCausalLM
from modeling_gpt.flops import flops_per_token, matmul_params, peak_tflops
from reference_gpt import PlainGPT
from train_accelerate import check_fp8, to_float8


SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODELS = ("ours", "plain", "transformers", "ours-fp8")
NOT_MEASURED = "not measured: the benchmark stopped before this model's turn"


@dataclass
class TrainBenchArguments:
    preset: str = field(default="gpt2", metadata={"help": "model size from GPTConfig presets (gpt2, gpt2.5, tiny, ...)"})
    n_layer: int | None = field(default=None, metadata={"help": "override the preset's number of layers"})
    n_embd: int | None = field(default=None, metadata={"help": "override the preset's width"})
    n_head: int | None = field(default=None, metadata={"help": "override the preset's number of heads"})
    vocab_size: int | None = field(default=None, metadata={"help": "override the vocabulary (default GPT-2's 50257)"})
    batch_size: int = field(default=8, metadata={"help": "micro-batch size"})
    seq_len: int = field(default=1024, metadata={"help": "tokens per sequence"})
    dtype: str = field(default="auto", metadata={"help": "autocast dtype: bf16, fp32 or auto (bf16 on GPU, fp32 on CPU)"})
    compile: bool | None = field(default=None, metadata={"help": "torch.compile the whole model (default: on GPU only)"})
    sdpa_backend: str = field(default="flash", metadata={"help": "sdpa kernel: flash, cudnn, efficient, math or auto"})
    steps: int = field(default=20, metadata={"help": "timed optimizer steps per model and round"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step (the trainer's micro-loop)"})
    warmup: int = field(default=5, metadata={"help": "untimed steps first (compilation, allocator, caches)"})
    rounds: int = field(default=1, metadata={"help": "alternate the models this many times; the best round counts"})
    models: str = field(default="auto", metadata={"help": f"comma-separated subset of {','.join(MODELS)}; auto: ours, "
                                                          "plain (classic presets) and transformers"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    peak_tflops: float | None = field(default=None, metadata={"help": "peak TFLOP/s for MFU where the table has none"})
    lr: float = field(default=6e-4, metadata={"help": "AdamW learning rate"})
    seed: int = field(default=1337, metadata={"help": "seed of the weights and the batches"})
    device: str = field(default="auto", metadata={"help": "cuda, cpu or auto"})
    output: str | None = field(default=None, metadata={"help": "JSON path (default out/bench/train_<device>_<preset>.json)"})
    save: bool = field(default=False, metadata={"help": SAVE_HELP})


def parse_models(models: str, allowed: tuple = ("ours", "transformers")) -> list[str]:
    names = [m.strip() for m in models.split(",") if m.strip()]
    bad = [m for m in names if m not in allowed]
    if bad or not names:
        raise ValueError(f"models={models!r} must be a comma-separated subset of {allowed}")
    return names


def train_models(models: str, config: GPTConfig) -> list[str]:
    """--models of this benchmark: auto is ours, plain where the preset is GPT-2's architecture, and transformers."""
    if models == "auto":
        return ["ours", "plain", "transformers"] if config.norm == "layernorm" else ["ours", "transformers"]
    return parse_models(models, MODELS)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device={device!r} is not supported; use cuda, cpu or auto")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no GPU; use --device cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> str:
    if dtype == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(DTYPES)} or auto")
    return dtype


def build_config(args) -> GPTConfig:
    """The preset with the command line's overrides; the context grows to the benchmark's sequence if needed."""
    overrides = {k: getattr(args, k) for k in ("n_layer", "n_embd", "n_head", "vocab_size") if getattr(args, k) is not None}
    if "vocab_size" in overrides:  # end-of-text stays the last id of a smaller vocabulary
        overrides["bos_token_id"] = overrides["eos_token_id"] = overrides["vocab_size"] - 1
    config = GPTConfig.from_preset(args.preset, **overrides)
    seq_len = getattr(args, "seq_len", 0)
    if seq_len > config.n_positions:
        config = GPTConfig.from_preset(args.preset, **overrides, n_positions=seq_len)
    return config


def build_models(config: GPTConfig, names: list[str], seed: int) -> dict[str, torch.nn.Module]:
    """The named models, all with ours' weights: transformers' twin (GPT2LMHeadModel or LlamaForCausalLM) and ours on
    sdpa, the plain reference, ours with float8 blocks."""
    torch.manual_seed(seed)
    ours = GPTForCausalLM(config)
    ours.set_attn_implementation("sdpa")
    build = {"ours": lambda: ours, "plain": lambda: PlainGPT.from_ours(ours), "transformers": ours.to_hf_native,
             "ours-fp8": lambda: to_float8(copy.deepcopy(ours))}
    models = {name: build[name]() for name in names}
    if "transformers" in models:
        models["transformers"].set_attn_implementation("sdpa")
    return models


@torch.no_grad()
def max_logit_diff(models: dict, vocab_size: int, seed: int) -> float | None:
    """Largest |logit difference| between the models on one batch: ~1e-5 proves they hold the same weights."""
    if len(models) < 2:
        return None
    x = torch.randint(0, vocab_size, (2, 16), generator=torch.Generator().manual_seed(seed))
    logits = []
    for name, model in models.items():
        if name == "ours-fp8":  # float8 matmuls need a GPU, and round on purpose
            continue
        training = model.training
        model.eval()
        logits.append(model(input_ids=x).logits[..., :vocab_size].float())  # plain's padded columns left out
        model.train(training)
    return max((a - logits[0]).abs().max().item() for a in logits[1:])


def make_batches(n: int, batch_size: int, seq_len: int, vocab_size: int, seed: int, pin: bool) -> list[torch.Tensor]:
    """Random token batches on the host; pinned so that the copy to the GPU can overlap the previous step."""
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, vocab_size, (batch_size, seq_len), generator=g) for _ in range(n)]
    return [b.pin_memory() for b in batches] if pin else batches


def static_bytes(model, optimizer) -> int:
    """Bytes a model keeps between steps: weights and AdamW moments (gradients are freed by zero_grad)."""
    tensors = list(model.parameters()) + [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


class Runner:
    """One model, its optimizer and the training step; `run(n)` does n steps with no host sync inside."""

    def __init__(self, model, device, dtype: str, compile_model: bool, lr: float, batches, grad_accum: int = 1):
        self.model = model.to(device).train()
        self.grad_accum = grad_accum
        self.device = device
        # fused AdamW: one kernel for the whole update instead of a loop over parameters
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.autocast = torch.autocast(device.type, dtype=DTYPES[dtype], enabled=dtype != "fp32")
        self.batches = batches
        self.i = 0
        self.losses = []  # loss tensors, read with .item() only after the timing

    def step(self):
        for _ in range(self.grad_accum):
            x = self.batches[self.i % len(self.batches)].to(self.device, non_blocking=True)
            self.i += 1
            with self.autocast:
                loss = self.forward(input_ids=x, labels=x).loss
            (loss / self.grad_accum).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.append(loss.detach())

    def run(self, n: int) -> tuple[float, int | None]:
        """Seconds for n steps, and the peak bytes this model alone would need (None on CPU)."""
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start_bytes = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        for _ in range(n):
            self.step()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = None
        if cuda:  # other models' weights live on the GPU too: count only this model's own bytes
            peak = static_bytes(self.model, self.optimizer) + torch.cuda.max_memory_allocated() - start_bytes
        return seconds, peak


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict:
    return {"device": device_name(device), "commit": git_commit(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": sys.version.split()[0]}


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]):
    """columns: (key, header, format spec); None prints as '-'."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append(["-" if row.get(k) is None else format(row[k], spec) for k, _, spec in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def sdpa_context(backend: str):
    if backend == "auto":
        return contextlib.nullcontext()
    if backend not in SDPA_BACKENDS:
        raise ValueError(f"sdpa_backend={backend!r} is not supported; use one of {sorted(SDPA_BACKENDS)} or auto")
    return sdpa_kernel(SDPA_BACKENDS[backend])


def timed(runners: dict, args, backend: str, record: Callable[[dict], None]) -> dict:
    """Alternate the models `rounds` times, each warmed up (compilation, allocator) just before its first timed run:
    (seconds, peak bytes) of each one's best round, or the error that stopped it (the others go on). `record(best)`
    after every run, so that a benchmark stopped from outside (a time limit) leaves the rows it finished."""
    best = {name: NOT_MEASURED for name in runners}
    with sdpa_context(backend):
        for round_ in range(args.rounds):
            for name, runner in runners.items():
                if round_ and isinstance(best[name], str):  # stopped by an error
                    continue
                try:
                    if not round_:
                        runner.run(args.warmup)
                    seconds, peak_bytes = runner.run(args.steps)
                except RuntimeError as err:  # a refused kernel, out of memory: this model's row says so
                    best[name] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
                else:
                    if not round_ or seconds < best[name][0]:
                        best[name] = (seconds, peak_bytes)
                record(best)
    return best


def result_rows(runners: dict, best: dict, args, fpt: float, peak: float | None) -> list[dict]:
    tokens = args.batch_size * args.seq_len * args.grad_accum * args.steps
    rows = []
    for name, runner in runners.items():
        row = {"model": name, "class": type(runner.model).__name__}
        if isinstance(best[name], str):
            rows.append(row | {"error": best[name]})
            continue
        seconds, peak_bytes = best[name]
        tps = tokens / seconds
        losses = [loss.item() for loss in runner.losses]
        rows.append(row | {
            "tokens_per_s": tps, "step_ms": 1000 * seconds / args.steps,
            "mfu": tps * fpt / (peak * 1e12) if peak else None,
            "peak_memory_gb": peak_bytes / 2**30 if peak_bytes is not None else None,
            "first_loss": losses[0], "last_loss": losses[-1], "steps_run": len(losses),
        })
    return rows


def ratios(rows: list[dict]) -> dict:
    """ours' tokens/s over each other model's, and float8's over ours; None where either failed."""
    tps = {r["model"]: r.get("tokens_per_s") for r in rows}
    pairs = [("ours", other) for other in tps if other not in ("ours", "ours-fp8")] + [("ours-fp8", "ours")]
    return {f"{a}/{b}": tps[a] / tps[b] if tps.get(a) and tps.get(b) else None
            for a, b in pairs if a in tps and b in tps}


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(TrainBenchArguments).parse_args_into_dataclasses(args=argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    compile_model = device.type == "cuda" if args.compile is None else args.compile
    for key in ("batch_size", "seq_len", "steps", "rounds", "grad_accum"):
        if getattr(args, key) < 1:
            raise ValueError(f"{key}={getattr(args, key)} must be at least 1")
    sdpa_context(args.sdpa_backend)  # refuses an unknown backend before any model is built
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores for whatever stays in fp32
    config = build_config(args)
    names = train_models(args.models, config)
    if "ours-fp8" in names:
        check_fp8(device)
    models = build_models(config, names, args.seed)
    logit_diff = max_logit_diff(models, config.vocab_size, args.seed)
    batches = make_batches(4, args.batch_size, args.seq_len, config.vocab_size, args.seed, pin=device.type == "cuda")
    runners = {name: Runner(m, device, dtype, compile_model, args.lr, batches, args.grad_accum)
               for name, m in models.items()}

    fpt = flops_per_token(config, args.seq_len)
    peak = args.peak_tflops or peak_tflops(device_name(device), dtype)
    output = results_path(f"train_{device.type}_{args.preset}.json", args.output, args.save)

    def record(best: dict) -> dict:
        rows = result_rows(runners, best, args, fpt, peak)
        ratio = ratios(rows)
        result = {
            "benchmark": "train_throughput", **environment(device),
            "settings": {**asdict(args), "dtype": dtype, "compile": compile_model, "models": names},
            "config": {k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd", "n_inner", "vocab_size",
                                                       "n_positions", "norm", "mlp", "position_embedding")}
            | {"padded_vocab_size": config.padded_vocab_size},
            "matmul_params": matmul_params(config), "flops_per_token": fpt, "peak_tflops": peak,
            "max_logit_diff": logit_diff, "results": rows, "ratios": ratio,
            "ratio_ours_vs_transformers": ratio.get("ours/transformers"),
        }
        atomic_io.write_json(output, result, indent=2)
        return result

    result = record(timed(runners, args, args.sdpa_backend, record))
    rows, ratio = result["results"], result["ratios"]

    print(f"{result['device']} | {args.preset} L={config.n_layer} C={config.n_embd} | B={args.batch_size} "
          f"T={args.seq_len} x {args.grad_accum} | {dtype} | compile={compile_model} | sdpa={args.sdpa_backend}")
    print_table(rows, [("model", "model", ""), ("class", "class", ""), ("tokens_per_s", "tokens/s", ",.0f"),
                       ("step_ms", "step ms", ".1f"), ("mfu", "MFU", ".1%"), ("peak_memory_gb", "peak GiB", ".2f"),
                       ("last_loss", "loss", ".4f"), ("error", "error", "")])
    for pair, value in ratio.items():
        print(f"{pair}: " + ("-" if value is None else f"{value:.3f}x"))
    if logit_diff is not None:
        print(f"max |logit diff| between the models: {logit_diff:.2e}")
    print(f"wrote {output}")
    return result


if __name__ == "__main__":
    main()
