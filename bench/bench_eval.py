"""HellaSwag evaluation speed (items per second) through eval.run_tasks.

  python bench/bench_eval.py                  # CPU: tiny model on 200 items, GPT-2 124M (random init) on 40 items
  python bench/bench_eval.py --device cuda    # GPU: full HellaSwag (10,042 items) on GPT-2 124M, bfloat16

--models takes presets (tiny, gpt2: GPTForCausalLM with random weights of the right shape; the speed
does not depend on the weights) or model folders / Hub ids (then acc and acc_norm mean something).
Prints a table and writes out/bench/eval_<device>.json (--save: the tracked bench/results/eval_<device>.json).
"""

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from transformers import AutoModelForCausalLM, HfArgumentParser

import atomic_io
from bench_output import SAVE_HELP, results_path
from eval import run_tasks
from modeling_gpt import GPTConfig, GPTForCausalLM
from modeling_gpt.tokenizer import gpt2_tokenizer

REPO = Path(__file__).resolve().parents[1]


@dataclass
class BenchArguments:
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "cpu or cuda."})
    models: Optional[str] = field(default=None, metadata={"help": "Comma-separated presets (tiny, gpt2) or model folders; "
                                                                 "default: tiny,gpt2 on CPU, gpt2 on GPU."})
    limits: Optional[str] = field(default=None, metadata={"help": "Items per model, comma-separated (0 = all 10,042); "
                                                                 "default: 200,40 on CPU, 0 on GPU."})
    batch_size: Optional[int] = field(default=None, metadata={"help": "Sequences per forward pass; default 32 CPU, 256 GPU."})
    dtype: Optional[str] = field(default=None, metadata={"help": "float32, bfloat16 or float16; default float32 CPU, bfloat16 GPU."})
    scoring: str = field(default="harness", metadata={"help": "HellaSwag scoring: harness or nanogpt."})
    data_dir: str = field(default=str(REPO.parent / "shared" / "data"), metadata={"help": "Folder laid out like ../shared/data."})
    output: Optional[str] = field(default=None, metadata={"help": "JSON path; default out/bench/eval_<device>.json."})
    save: bool = field(default=False, metadata={"help": SAVE_HELP})


def build(name: str, dtype, device):
    if name in ("tiny", "gpt2"):
        torch.manual_seed(0)
        model = GPTForCausalLM(GPTConfig.from_preset(name)).to(dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    return model.to(device).eval()


def main(argv=None):
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses(argv)
    on_gpu = args.device.startswith("cuda")
    models = (args.models or ("gpt2" if on_gpu else "tiny,gpt2")).split(",")
    limits = [int(x) or None for x in (args.limits or ("0" if on_gpu else "200,40")).split(",")]
    if len(limits) != len(models):
        raise ValueError(f"--limits has {len(limits)} values for {len(models)} models ({args.models}); give one per model")
    batch_size = args.batch_size or (256 if on_gpu else 32)
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_gpu else "float32"))
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(Path(args.data_dir) / "tiktoken-cache"))
    tokenizer = gpt2_tokenizer(Path(args.data_dir) / "gpt2-tokenizer")

    rows = []
    for name, limit in zip(models, limits):
        model = build(name, dtype, args.device)
        kwargs = dict(data_dir=args.data_dir, scoring=args.scoring, batch_size=batch_size, device=args.device)
        run_tasks(model, tokenizer, "hellaswag", limit=min(8, limit or 8), **kwargs)  # warm-up (kernels, allocator)
        start = time.perf_counter()
        result = run_tasks(model, tokenizer, "hellaswag", limit=limit, **kwargs)["hellaswag"]
        seconds = time.perf_counter() - start
        rows.append({
            "model": name, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "items": result["n"], "seconds": round(seconds, 2), "items_per_s": round(result["n"] / seconds, 1),
            "acc": result["acc"], "acc_norm": result["acc_norm"], "batch_size": batch_size, "dtype": str(dtype).removeprefix("torch."),
            "scoring": args.scoring,
        })
        del model

    device_name = torch.cuda.get_device_name() if on_gpu else platform.processor() or platform.machine()
    header = ["model", "params_M", "items", "seconds", "items_per_s", "acc", "acc_norm", "batch_size", "dtype"]
    print(f"HellaSwag on {args.device} ({device_name}, {torch.get_num_threads()} threads), scoring {args.scoring}")
    widths = [max(len(h), *(len(f"{r[h]:.4f}" if isinstance(r[h], float) and h.startswith("acc") else str(r[h])) for r in rows))
              for h in header]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        cells = [f"{r[h]:.4f}" if h.startswith("acc") else str(r[h]) for h in header]
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths)))

    out = results_path(f"eval_{'gpu' if on_gpu else 'cpu'}.json", args.output, args.save)
    report = {"device": args.device, "device_name": device_name, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "command": "python bench/bench_eval.py " + " ".join(argv or sys.argv[1:]), "rows": rows}
    atomic_io.write_json(out, report, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
