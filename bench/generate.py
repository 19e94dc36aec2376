"""KV-cached greedy generation: our GPTForCausalLM against transformers' own model with the same weights.

Each batch size generates exactly --new_tokens tokens (no stop on end-of-text) from the same random prompt
with `model.generate(do_sample=False)`, both models alternating for --rounds rounds; the best round counts.
Prints a table (tokens/s, ratio, whether both produced the same tokens) and writes JSON.

    # one GPU (the documented run): bf16 weights
    python bench/generate.py --preset gpt2
    # this CPU: fp32, one thread
    python bench/generate.py --preset gpt2 --n_layer 4 --n_embd 256 --n_head 4 --threads 1 \
        --output out/bench/generate_cpu_small.json
"""

import time
from dataclasses import asdict, dataclass, field

import torch
from transformers import GenerationConfig, HfArgumentParser

import atomic_io
from bench_output import SAVE_HELP, results_path
from train_throughput import (
    DTYPES, build_config, build_models, environment, max_logit_diff, parse_models, print_table,
    resolve_device, resolve_dtype,
)


@dataclass
class GenerateBenchArguments:
    preset: str = field(default="gpt2", metadata={"help": "model size from GPTConfig presets (gpt2, gpt2.5, tiny, ...)"})
    n_layer: int | None = field(default=None, metadata={"help": "override the preset's number of layers"})
    n_embd: int | None = field(default=None, metadata={"help": "override the preset's width"})
    n_head: int | None = field(default=None, metadata={"help": "override the preset's number of heads"})
    vocab_size: int | None = field(default=None, metadata={"help": "override the vocabulary (default GPT-2's 50257)"})
    batch_sizes: str = field(default="1,8", metadata={"help": "comma-separated batch sizes"})
    prompt_len: int = field(default=32, metadata={"help": "tokens in the prompt"})
    new_tokens: int = field(default=128, metadata={"help": "tokens generated per sequence"})
    dtype: str = field(default="auto", metadata={"help": "weights dtype: bf16, fp32 or auto (bf16 on GPU, fp32 on CPU)"})
    rounds: int = field(default=3, metadata={"help": "alternate the models this many times; the best round counts"})
    models: str = field(default="ours,transformers", metadata={"help": "comma-separated subset of ours,transformers"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    seed: int = field(default=1337, metadata={"help": "seed of the weights and the prompts"})
    device: str = field(default="auto", metadata={"help": "cuda, cpu or auto"})
    output: str | None = field(default=None, metadata={"help": "JSON path (default out/bench/generate_<device>_<preset>.json)"})
    save: bool = field(default=False, metadata={"help": SAVE_HELP})


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ValueError(f"batch_sizes={text!r} must be comma-separated positive integers, e.g. 1,8")
    return sizes


def greedy(model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    # no eos: every run generates exactly new_tokens tokens, and no stopping-criteria work is timed
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, use_cache=True, eos_token_id=None,
                              pad_token_id=model.config.eos_token_id)
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)


def timed_generate(model, prompt, new_tokens: int) -> tuple[float, torch.Tensor]:
    cuda = prompt.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = greedy(model, prompt, new_tokens)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(GenerateBenchArguments).parse_args_into_dataclasses(args=argv)
    names = parse_models(args.models)
    sizes = parse_batch_sizes(args.batch_sizes)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    for key in ("prompt_len", "new_tokens", "rounds"):
        if getattr(args, key) < 1:
            raise ValueError(f"{key}={getattr(args, key)} must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = build_config(args)
    if args.prompt_len + args.new_tokens > config.n_positions:
        raise ValueError(f"prompt_len + new_tokens = {args.prompt_len + args.new_tokens} is beyond the model's "
                         f"n_positions={config.n_positions}")
    models = build_models(config, names, args.seed)
    logit_diff = max_logit_diff(models, config.vocab_size, args.seed)
    models = {name: m.to(device=device, dtype=DTYPES[dtype]).eval() for name, m in models.items()}

    rows = []
    g = torch.Generator().manual_seed(args.seed)
    for batch_size in sizes:
        prompt = torch.randint(0, config.vocab_size, (batch_size, args.prompt_len), generator=g).to(device)
        for model in models.values():  # warm-up: allocator, kernels, lazy init
            greedy(model, prompt, 2)
        best, outputs = {name: float("inf") for name in names}, {}
        for _ in range(args.rounds):  # alternate, so that a busy moment on a shared machine hits both models
            for name, model in models.items():
                seconds, outputs[name] = timed_generate(model, prompt, args.new_tokens)
                best[name] = min(best[name], seconds)
        same = all(torch.equal(outputs[n], outputs[names[0]]) for n in names)
        for name, model in models.items():
            rows.append({"model": name, "class": type(model).__name__, "batch_size": batch_size,
                         "tokens_per_s": batch_size * args.new_tokens / best[name],
                         "ms_per_token": 1000 * best[name] / args.new_tokens,
                         "generated": outputs[name].shape[1] - args.prompt_len, "same_tokens": same})
        if len(names) == 2:
            ratio = rows[-2]["tokens_per_s"] / rows[-1]["tokens_per_s"]
            rows[-2]["ratio"] = rows[-1]["ratio"] = ratio

    result = {
        "benchmark": "generate", **environment(device),
        "settings": {**asdict(args), "dtype": dtype, "models": names, "batch_sizes": sizes},
        "config": {k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions")},
        "max_logit_diff": logit_diff, "results": rows,
    }
    output = results_path(f"generate_{device.type}_{args.preset}.json", args.output, args.save)
    atomic_io.write_json(output, result, indent=2)

    print(f"{result['device']} | {args.preset} L={config.n_layer} C={config.n_embd} | {dtype} | "
          f"prompt {args.prompt_len} + {args.new_tokens} new tokens, greedy, KV cache")
    print_table(rows, [("batch_size", "batch", "d"), ("model", "model", ""), ("class", "class", ""),
                       ("tokens_per_s", "tokens/s", ",.1f"), ("ms_per_token", "ms/token", ".2f"),
                       ("ratio", "ours/theirs", ".3f"), ("same_tokens", "same tokens", "")])
    print(f"wrote {output}")
    return result


if __name__ == "__main__":
    main()
