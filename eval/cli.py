"""`gpt-eval`: benchmark a causal LM (a progress bar per task), or `gpt-eval plot` training curves.

  gpt-eval --model PATH_OR_ID --tasks hellaswag,lambada [--data-dir ../shared/data] [--output r.json]
  accelerate launch --multi_gpu --num_processes N -m eval.cli --model ...   (items split across ranks)
  gpt-eval plot RUN_DIR_or_metrics.jsonl [more runs] --output DIR            (gpt-eval plot --help)
"""

import argparse
import json
import os
import time
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from transformers import HfArgumentParser

from cli_guard import load_model, missing_local_folder, nearest_folders, run_cli

DTYPES = ("float32", "bfloat16", "float16", "auto")
LOG_SOFTMAX_DTYPES = ("float32", "model")


@dataclass
class EvalArguments:
    model: str = field(metadata={"help": "Model folder (save_pretrained output, e.g. a run's final/) or Hub id."})
    tasks: str = field(
        default="hellaswag",
        metadata={"help": "Comma-separated: hellaswag, lambada_openai (or lambada), wikitext, piqa, arc_easy, "
                          "arc_challenge, winogrande. Empty for none (with --val-data-dir)."},
    )
    data_dir: Optional[str] = field(
        default=None, metadata={"help": "Local data laid out like ../shared/data; default: the Hub datasets."}
    )
    scoring: str = field(default="harness", metadata={"help": "HellaSwag scoring: harness (lm-eval) or nanogpt (build-nanogpt)."})
    limit: Optional[int] = field(default=None, metadata={"help": "Evaluate only the first N documents of each task."})
    batch_size: int = field(default=8, metadata={"help": "Sequences per forward pass."})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ...; default cuda when available."})
    dtype: str = field(default="float32", metadata={"help": f"Weights dtype: {', '.join(DTYPES)} (auto: the checkpoint's)."})
    log_softmax_dtype: str = field(
        default="float32",
        metadata={"help": "bfloat16/float16 models: log-softmax in float32 (float32, default) or in the model's dtype as "
                          "lm-eval does (model); recorded in the results."},
    )
    tokenizer: Optional[str] = field(default=None, metadata={"help": "Tokenizer folder or Hub id; default: the model's."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow a model's own code from the Hub."})
    max_length: Optional[int] = field(default=None, metadata={"help": "Longest input in tokens; default: the model's."})
    stride: Optional[int] = field(
        default=None, metadata={"help": "WikiText: tokens scored per window after the first; default max_length (lm-eval)."}
    )
    val_data_dir: Optional[str] = field(default=None, metadata={"help": "Token shards (gpt-tokenize output): also report val loss."})
    val_batches: Optional[int] = field(default=None, metadata={"help": "Val batches to read; default: the whole val split."})
    seq_len: Optional[int] = field(default=None, metadata={"help": "Val sequence length; default: max_length."})
    output: Optional[str] = field(default=None, metadata={"help": "Write the results JSON here."})


@dataclass
class PlotArguments:
    output: str = field(default="plots", metadata={"help": "Folder for loss.png and hellaswag.png."})


WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _check_local(name: str, what: str, needs: tuple, hint: str):
    """A local folder must exist and hold one of `needs`; a Hub id (namespace/name) is left to transformers."""
    path = Path(name).expanduser()
    if missing_local_folder(name):
        raise FileNotFoundError(f"{what} {name}: no such folder; {nearest_folders(name)}")
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"{what} {name}: not a folder; give a save_pretrained folder or a Hub id")
    if not any((path / f).is_file() for f in needs):
        found = sorted(p.name for p in path.iterdir())[:12]
        raise FileNotFoundError(f"{what} {name}: none of {', '.join(needs)} in it (found {found}); {hint}")


def _check_output(path: Path):
    """--output replaces an earlier results file only, never another file (a model's config.json, say)."""
    if not path.exists():
        return
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        earlier = None
    if not isinstance(earlier, dict) or "results" not in earlier:
        raise ValueError(f"--output {path} exists and is not a gpt-eval results file; choose another path")


def _parser(dataclass_type, **kwargs) -> HfArgumentParser:
    kwargs.setdefault("prog", "gpt-eval")
    kwargs.setdefault("description", __doc__)
    return HfArgumentParser(dataclass_type, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def _load(args: EvalArguments):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import modeling_gpt  # noqa: F401  (registers GPTForCausalLM with the Auto classes)
    from modeling_gpt.network import load_local_or_hub

    if args.dtype not in DTYPES:
        raise ValueError(f"--dtype {args.dtype!r}; accepted: {', '.join(DTYPES)}")
    _check_local(args.model, "--model", ("config.json",), "give a save_pretrained folder, e.g. a run's final/")
    _check_local(args.model, "--model", WEIGHTS, "the weights are missing: copy model.safetensors into it")
    if args.tokenizer is None:
        _check_local(args.model, "--model", TOKENIZER_FILES,
                     "it has no tokenizer: pass --tokenizer with the one the model was trained with")
    else:
        _check_local(args.tokenizer, "--tokenizer", TOKENIZER_FILES, "give a folder saved with save_pretrained")
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    fix = "pass a local model folder (e.g. a run's final/), or download it once with network and set HF_HUB_OFFLINE=1"
    model = load_local_or_hub(partial(load_model, AutoModelForCausalLM.from_pretrained, what="--model", dtype=dtype,
                                      trust_remote_code=args.trust_remote_code), args.model, "--model", fix)
    tokenizer = load_local_or_hub(partial(AutoTokenizer.from_pretrained, trust_remote_code=args.trust_remote_code),
                                  args.tokenizer or args.model, "the tokenizer", fix)
    _check_tokenizer_fits(tokenizer, model, args.tokenizer or args.model)
    return model, tokenizer


def _check_tokenizer_fits(tokenizer, model, name: str):
    """A model's own tokenizer has at most its vocab_size tokens (more would index past the embedding) and at least
    90% of them: embeddings are padded by a few percent at most (e.g. GPT-2's 50,257 words to 50,304 rows)."""
    vocab = getattr(model.config.get_text_config(), "vocab_size", None) or model.get_input_embeddings().num_embeddings
    size = len(tokenizer)
    if not 0.9 * vocab <= size <= vocab:
        raise ValueError(
            f"the tokenizer {name} has {size:,} tokens but the model's vocabulary {vocab:,}: it cannot be the model's "
            f"(a model's tokenizer has at most vocab_size tokens and at least 90% of them); pass --tokenizer with "
            "the tokenizer the model was trained with")


def evaluate_main(argv) -> dict:
    import torch

    from . import format_table, run_tasks, save_results
    from .loglikelihood import max_length_of
    from .val_loss import val_loss

    (args,) = _parser(EvalArguments).parse_args_into_dataclasses(argv)
    if args.log_softmax_dtype not in LOG_SOFTMAX_DTYPES:
        raise ValueError(f"--log_softmax_dtype {args.log_softmax_dtype!r}; accepted: {', '.join(LOG_SOFTMAX_DTYPES)}")
    if args.output:
        _check_output(Path(args.output))
    if args.device is not None:
        try:
            torch.device(args.device)
        except RuntimeError:
            raise ValueError(f"--device {args.device!r} is not a device; use cpu, cuda, cuda:1, mps, ...") from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-task bars are the progress; no "Loading weights" bar before them
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by accelerate launch / torchrun
        from accelerate import Accelerator

        # without CUDA, accelerate 1.x only sets up gloo (MULTI_CPU) when asked for the CPU explicitly
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model, tokenizer = _load(args)
    device = accelerator.device if accelerator else torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    main_process = accelerator is None or accelerator.is_main_process

    start = time.perf_counter()
    results = {}
    if args.tasks:
        results = run_tasks(model, tokenizer, args.tasks, data_dir=args.data_dir, scoring=args.scoring, limit=args.limit,
                            batch_size=args.batch_size, accelerator=accelerator, device=device,
                            max_length=args.max_length, stride=args.stride,
                            upcast=args.log_softmax_dtype == "float32", progress=True)
    if args.val_data_dir:
        seq_len = args.seq_len or args.max_length or max_length_of(model, tokenizer)
        val = val_loss(model, args.val_data_dir, args.batch_size, seq_len, args.val_batches, accelerator, tokenizer)
        results["val"] = {"loss": val["val_loss"], "perplexity": val["val_ppl"], "n": val["tokens"]}
    if not results:
        raise ValueError("nothing to evaluate: give --tasks and/or --val-data-dir")
    seconds = time.perf_counter() - start

    if main_process:
        print(format_table(results))
        processes = accelerator.num_processes if accelerator else 1
        print(f"{args.model} | scoring {args.scoring} | {model.dtype}, log-softmax in "
              f"{'float32' if args.log_softmax_dtype == 'float32' else model.dtype} | {processes} process(es) | {seconds:.1f} s")
        if args.output:
            config = {k: v for k, v in vars(args).items() if k not in ("model", "output")}
            path = save_results(results, args.output, model_name=args.model, scoring=args.scoring, config=config)
            print(f"results written to {path}")
    return results


def plot_main(argv) -> list:
    from .plot import plot_runs

    parser = _parser(PlotArguments, prog="gpt-eval plot", description="Training curves of one or more runs.")
    parser.add_argument("runs", nargs="+", help="Run folders holding metrics.jsonl, or metrics.jsonl files.")
    args, extra = parser.parse_args_into_dataclasses(argv)
    paths = plot_runs(extra.runs, args.output)
    for path in paths:
        print(f"wrote {path}")
    if not any(p.name == "hellaswag.png" for p in paths):
        print("no hellaswag.png: no run logged HellaSwag scores (train with --hellaswag true, e.g. "
              "--hellaswag_data_dir ../shared/data --hellaswag_limit 200, to get the curve with the GPT-2/GPT-3 lines)")
    return paths


def _main(argv):
    if argv[:1] == ["plot"]:
        plot_main(argv[1:])
    else:
        evaluate_main(argv)


def main(argv=None):
    run_cli("gpt-eval", _main, argv)


if __name__ == "__main__":
    main()
