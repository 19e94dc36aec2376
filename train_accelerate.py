"""Pretrain a GPT on token shards with a hand-written Accelerate loop.

One script from a laptop CPU to `accelerate launch` on many GPUs and nodes (DDP or FSDP):

    gpt-train --config configs/tiny.yaml                      # CPU, minutes
    accelerate launch --config_file configs/accelerate/ddp_8gpu.yaml \
        train_accelerate.py --config configs/gpt2-124m.yaml   # GPT-2 124M on FineWeb-Edu 10B

Settings are dataclasses (a YAML recipe plus command-line overrides). The small units (LR schedule,
optimizer groups, checkpoints, metrics, MFU) sit above `main()`, which is the loop itself.
"""

import argparse
import hashlib
import importlib.util
import json
import logging
import math
import os
import platform
import shutil
import socket
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from types import MethodType
from typing import Any, Callable, Optional, Union, get_args, get_origin, get_type_hints

import torch
import yaml
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from accelerate import Accelerator, DistributedType
from accelerate.utils import ProjectConfiguration, get_mixed_precision_context_manager, set_seed
from tqdm.auto import tqdm
from safetensors.torch import load_file
from transformers import AutoConfig, GenerationConfig, GPT2LMHeadModel, HfArgumentParser

import atomic_io
import token_shards
from cli_guard import (PICKLE_WEIGHTS, FolderLock, Interrupted, RunError, UserError, check_pickles, check_safetensors,
                       load_model, load_state_strictly, load_weights_only, missing_local_folder, nonfinite_weights,
                       refuse_pickle_weights, run_cli, writing)
from eval import mean_loss, run_tasks
from run_records import MetricsLog, read_run_record
from modeling_gpt import PRESETS, GPTConfig, GPTForCausalLM
from modeling_gpt.flops import flops_per_token, peak_tflops
from modeling_gpt.network import load_local_or_hub
from modeling_gpt.tokenizer import publishable_tokenizer

MIXED_PRECISION = ("no", "fp16", "bf16")
TRACKERS = ("auto", "tensorboard", "wandb", "none")
MODEL_OVERRIDES = ("n_layer", "n_head", "n_embd", "n_inner", "n_positions", "dropout", "rope_theta",
                   "qk_norm", "tie_word_embeddings", "zero_init_residual")
OPTIMIZERS = ("adamw", "muon")
LR_SCHEDULES = ("cosine", "wsd")


# ----------------------------------------------------------------------------------------------
# Settings


@dataclass
class ModelArguments:
    model_preset: str = field(
        default="gpt2", metadata={"help": f"Named model size to train from scratch: one of {sorted(PRESETS)}."}
    )
    init_from: Optional[str] = field(
        default=None,
        metadata={
            "help": "Fine-tune these weights instead of training from scratch: a Hugging Face folder or Hub id of our "
            "GPT or of transformers' GPT-2 (e.g. openai-community/gpt2, converted on the fly), or one of our "
            "checkpoints (output_dir/checkpoints/step_N). Only dropout can be overridden."
        },
    )
    n_layer: Optional[int] = field(default=None, metadata={"help": "Override the preset's number of blocks."})
    n_head: Optional[int] = field(default=None, metadata={"help": "Override the preset's number of attention heads."})
    n_embd: Optional[int] = field(default=None, metadata={"help": "Override the preset's width."})
    n_inner: Optional[int] = field(default=None, metadata={"help": "Override the preset's MLP hidden size (d_ff)."})
    n_positions: Optional[int] = field(default=None, metadata={"help": "Override the preset's context length."})
    dropout: Optional[float] = field(default=None, metadata={"help": "Override the preset's (or init_from's) dropout: 0 for pretraining."})
    rope_theta: Optional[float] = field(default=None, metadata={"help": "Override the RoPE base (modern variant only)."})
    qk_norm: Optional[bool] = field(
        default=None, metadata={"help": "RMSNorm on queries and keys per head (the modern variant then exports as Qwen3)."}
    )
    tie_word_embeddings: Optional[bool] = field(
        default=None, metadata={"help": "Override the preset's sharing of the input embedding with the output head."}
    )
    zero_init_residual: Optional[bool] = field(
        default=None, metadata={"help": "Initialise the residual projections (attention and MLP c_proj) at zero."}
    )
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "Attention kernel: sdpa, eager, flash_attention_2, flex_attention."}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass to save memory."}
    )
    fused_loss: bool = field(
        default=False,
        metadata={"help": "Training loss straight from the last hidden states, never the (B, T, V) logits: Liger "
                  "Kernel's fused linear cross-entropy on CUDA where installed (pip install -e \".[gpu]\"), else "
                  "a chunked PyTorch version. Same loss and gradients; evaluation still computes logits."},
    )


@dataclass
class DataArguments:
    data_dir: Optional[str] = field(
        default=None, metadata={"help": "Folder of token shards with manifest.json, written by gpt-tokenize."}
    )
    tokenize_dataset: Optional[str] = field(
        default=None,
        metadata={
            "help": "When data_dir has no manifest.json, first tokenize this dataset (Hub id or local folder laid out "
            "like one, e.g. ../shared/data/fineweb-edu-mini) into data_dir with gpt-tokenize. Main process only."
        },
    )
    tokenize_name: Optional[str] = field(default=None, metadata={"help": "Dataset config name for tokenize_dataset, e.g. sample-10BT."})
    tokenize_tokenizer: Optional[str] = field(
        default=None,
        metadata={"help": "Tokenizer for tokenize_dataset (folder or Hub id); default GPT-2 through tiktoken."},
    )
    tokenize_shard_size: Optional[int] = field(
        default=None, metadata={"help": "Tokens per shard when tokenizing (gpt-tokenize's default if unset)."}
    )
    tokenize_val_tokens: Optional[int] = field(
        default=None, metadata={"help": "Tokens held out as the validation split when tokenizing (default: one shard)."}
    )


@dataclass
class TrainArguments:
    output_dir: str = field(
        default="out", metadata={"help": "Run folder: checkpoints/, final/, metrics.jsonl and tracker logs."}
    )
    seed: int = field(default=1337, metadata={"help": "Seed of the model init, the data order and dropout."})
    max_steps: int = field(default=19073, metadata={"help": "Number of optimizer steps."})
    micro_batch_size: int = field(default=64, metadata={"help": "Sequences per forward pass per process."})
    seq_len: int = field(default=1024, metadata={"help": "Tokens per sequence."})
    total_batch_tokens: int = field(
        default=524288,
        metadata={
            "help": "Tokens per optimizer step over all processes; gradient accumulation = total_batch_tokens / "
            "(micro_batch_size * seq_len * world_size), which must be a whole number."
        },
    )
    optimizer: str = field(
        default="adamw",
        metadata={"help": f"One of {OPTIMIZERS}: AdamW for everything, or Muon for the 2-D weights of the blocks and "
                          "AdamW for the embeddings, head, norms and biases."},
    )
    learning_rate: float = field(default=6e-4, metadata={"help": "Peak learning rate of AdamW."})
    lr_schedule: str = field(
        default="cosine",
        metadata={"help": f"One of {LR_SCHEDULES}: linear warmup, then cosine decay, or warmup-stable-decay "
                          "(constant, then a linear decay over the last decay_ratio of the steps)."},
    )
    min_lr_ratio: float = field(default=0.1, metadata={"help": "The schedule decays to the peak * min_lr_ratio."})
    warmup_steps: int = field(default=715, metadata={"help": "Linear warmup steps before the stable or decaying part."})
    decay_ratio: float = field(default=0.2, metadata={"help": "wsd: the fraction of max_steps spent in the final decay."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay, on matrices and embeddings only."})
    muon_learning_rate: float = field(
        default=0.02, metadata={"help": "optimizer=muon: peak learning rate of Muon (same schedule as AdamW's)."}
    )
    muon_momentum: float = field(default=0.95, metadata={"help": "optimizer=muon: Muon's (Nesterov) momentum."})
    muon_weight_decay: float = field(default=0.0, metadata={"help": "optimizer=muon: Muon's decoupled weight decay."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    grad_clip: float = field(default=1.0, metadata={"help": "Clip the global gradient norm to this (0 = no clipping)."})
    eval_interval: int = field(default=250, metadata={"help": "Evaluate every this many steps and at the end (0 = never)."})
    val_batches: int = field(
        default=20, metadata={"help": "Validation micro-batches per evaluation (split over the processes)."}
    )
    hellaswag: bool = field(default=False, metadata={"help": "Also score HellaSwag (through eval/) at each evaluation."})
    hellaswag_data_dir: Optional[str] = field(
        default=None, metadata={"help": "Folder with hellaswag/hellaswag_val.jsonl (e.g. ../shared/data); default: the Hub."}
    )
    hellaswag_limit: Optional[int] = field(default=None, metadata={"help": "Score only the first N HellaSwag examples."})
    hellaswag_scoring: str = field(
        default="nanogpt",
        metadata={"help": "HellaSwag scoring: 'nanogpt' (build-nanogpt's, the one the plots' GPT-2/GPT-3 reference "
                          "lines use) or 'harness' (lm-evaluation-harness)."},
    )
    sample_prompts: list[str] = field(
        default_factory=lambda: ["Hello, I'm a language model,"],
        metadata={"help": "Prompts completed and logged at each evaluation (none to turn off)."},
    )
    sample_max_new_tokens: int = field(default=32, metadata={"help": "Length of the sampled completions."})
    log_interval: int = field(default=10, metadata={"help": "Print and report metrics every this many steps."})
    save_interval: int = field(default=1000, metadata={"help": "Checkpoint every this many steps and at the end (0 = at the end only)."})
    keep_last_k: int = field(default=3, metadata={"help": "Keep this many newest checkpoints (0 = keep all)."})
    resume_from_checkpoint: Optional[str] = field(
        default=None,
        metadata={
            "help": "'latest' (the newest checkpoint in output_dir/checkpoints, or a fresh start when there is none) "
            "or the path of a checkpoint folder."
        },
    )
    allow_config_change: bool = field(
        default=False,
        metadata={"help": "Resume although the schedule, optimizer, batch, model or data set differ from the checkpoint's "
                          "(refused otherwise); the changes are recorded in metrics.jsonl."},
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the training forward (eval and sampling stay eager)."})
    fp8: bool = field(
        default=False,
        metadata={"help": "Train the blocks' linear layers in float8 through torchao (pip install -e \".[gpu]\"); needs a "
                          "CUDA GPU of compute capability >= 8.9 (Ada, Hopper). Checkpoints and final/ keep ordinary weights."},
    )
    mixed_precision: Optional[str] = field(
        default=None,
        metadata={"help": f"One of {MIXED_PRECISION}; unset: what `accelerate launch` / its config says (else no)."},
    )
    tracker: str = field(
        default="auto", metadata={"help": f"One of {TRACKERS}; auto = TensorBoard when installed."}
    )
    run_name: Optional[str] = field(default=None, metadata={"help": "Tracker run name; default: output_dir's name."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh in an output_dir that holds an earlier run: its checkpoints/, final/ and "
                          "metrics.jsonl are replaced. Without it such a folder is refused."},
    )


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainArguments)


class ConfigError(UserError, ValueError):
    """A setting that cannot work; the message names the value and what is accepted."""


def _check_types(obj):
    """Values from YAML skip argparse's conversion: check them against the field types."""
    hints = get_type_hints(type(obj))  # HfArgumentParser rewrites Field.type in place
    for f in fields(obj):
        value, kind = getattr(obj, f.name), hints[f.name]
        if get_origin(kind) is Union:
            if value is None:
                continue
            kind = next(a for a in get_args(kind) if a is not type(None))
        if get_origin(kind) is list:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise ConfigError(f"{f.name}={value!r} must be of type {getattr(kind, '__name__', kind)}")


def parse_args(argv=None) -> tuple[ModelArguments, DataArguments, TrainArguments]:
    """`--config recipe.yaml` gives the defaults; any field can then be overridden on the command line."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES, description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML recipe whose keys are the fields below (e.g. configs/gpt2-124m.yaml).")
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            raise ConfigError(f"--config {known.config}: no such file")
        try:
            recipe = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
        if not isinstance(recipe, dict):
            raise ConfigError(f"{path} must hold a mapping of field: value, got {type(recipe).__name__}")
        allowed = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls)}
        unknown = sorted(set(recipe) - allowed)
        if unknown:
            raise ConfigError(f"{path}: unknown field(s) {unknown}; accepted fields: {sorted(allowed)}")
        parser.set_defaults(**recipe)
    model_args, data_args, train_args, _ = parser.parse_args_into_dataclasses(args=argv)
    for obj in (model_args, data_args, train_args):
        _check_types(obj)
        for f in fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name}={value} must be a finite number")
    validate_args(model_args, data_args, train_args)
    return model_args, data_args, train_args


def validate_args(model_args: ModelArguments, data_args: DataArguments, args: TrainArguments):
    """Raise ValueError naming the bad value and what is accepted."""
    if model_args.init_from is None and model_args.model_preset not in PRESETS:
        raise ConfigError(f"model_preset={model_args.model_preset!r} is unknown; choose one of {sorted(PRESETS)}")
    shape = {k: getattr(model_args, k) for k in MODEL_OVERRIDES if k != "dropout" and getattr(model_args, k) is not None}
    if model_args.init_from is not None and missing_local_folder(model_args.init_from):
        raise ConfigError(f"init_from={model_args.init_from!r}: no such folder; give a Hugging Face folder or a Hub id")
    if model_args.init_from is not None and shape:
        raise ConfigError(f"model overrides {shape} change the shape of a model trained from scratch; with init_from only "
                          "dropout can be overridden")
    if data_args.data_dir is None:
        raise ConfigError("data_dir is not set: give the token shard folder in the recipe or with --data_dir")
    for name in ("max_steps", "micro_batch_size", "seq_len", "total_batch_tokens", "log_interval", "sample_max_new_tokens"):
        if getattr(args, name) < 1:
            raise ConfigError(f"{name}={getattr(args, name)} must be >= 1")
    for name in ("warmup_steps", "eval_interval", "save_interval", "keep_last_k", "val_batches"):
        if getattr(args, name) < 0:
            raise ConfigError(f"{name}={getattr(args, name)} must be >= 0")
    if args.eval_interval and args.val_batches < 1 and not args.hellaswag and not args.sample_prompts:
        raise ConfigError(f"eval_interval={args.eval_interval} but val_batches=0, hellaswag off and no sample_prompts: nothing to evaluate")
    for name in ("learning_rate", "muon_learning_rate"):
        if not getattr(args, name) > 0:
            raise ConfigError(f"{name}={getattr(args, name)} must be > 0")
    for name, allowed in (("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES)):
        if getattr(args, name) not in allowed:
            raise ConfigError(f"{name}={getattr(args, name)!r} is not supported; use one of {allowed}")
    if not 0 <= args.decay_ratio <= 1:
        raise ConfigError(f"decay_ratio={args.decay_ratio} must be in [0, 1]")
    if not 0 <= args.muon_momentum < 1 or args.muon_weight_decay < 0:
        raise ConfigError(
            f"muon_momentum={args.muon_momentum} must be in [0, 1) and muon_weight_decay={args.muon_weight_decay} >= 0"
        )
    if args.optimizer == "muon" and args.mixed_precision == "fp16":
        raise ConfigError("optimizer='muon' with mixed_precision='fp16' is not supported (one loss scaler cannot "
                          "step two optimizers); use bf16 or no")
    if not 0 <= args.min_lr_ratio <= 1:
        raise ConfigError(f"min_lr_ratio={args.min_lr_ratio} must be in [0, 1]")
    if args.weight_decay < 0 or args.grad_clip < 0 or args.adam_epsilon <= 0:
        raise ConfigError(
            f"weight_decay={args.weight_decay} and grad_clip={args.grad_clip} must be >= 0, adam_epsilon={args.adam_epsilon} > 0"
        )
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(args, name) < 1:
            raise ConfigError(f"{name}={getattr(args, name)} must be in [0, 1)")
    if args.mixed_precision is not None and args.mixed_precision not in MIXED_PRECISION:
        raise ConfigError(f"mixed_precision={args.mixed_precision!r} is not supported; use one of {MIXED_PRECISION}")
    if args.tracker not in TRACKERS:
        raise ConfigError(f"tracker={args.tracker!r} is not supported; use one of {TRACKERS}")
    if args.hellaswag_scoring not in ("nanogpt", "harness"):
        raise ConfigError(f"hellaswag_scoring={args.hellaswag_scoring!r} is not supported; use 'nanogpt' or 'harness'")
    if args.hellaswag_limit is not None and args.hellaswag_limit < 1:
        raise ConfigError(f"hellaswag_limit={args.hellaswag_limit} must be >= 1")


def gradient_accumulation_steps(total_batch_tokens: int, micro_batch_size: int, seq_len: int, world_size: int) -> int:
    """Micro-steps per optimizer step so that every step sees exactly total_batch_tokens tokens."""
    per_micro_step = micro_batch_size * seq_len * world_size
    if total_batch_tokens % per_micro_step:
        raise ConfigError(
            f"total_batch_tokens={total_batch_tokens} is not a multiple of micro_batch_size * seq_len * world_size = "
            f"{micro_batch_size} * {seq_len} * {world_size} = {per_micro_step}; change one of them "
            f"(e.g. total_batch_tokens={max(1, round(total_batch_tokens / per_micro_step)) * per_micro_step})"
        )
    return total_batch_tokens // per_micro_step


# ----------------------------------------------------------------------------------------------
# Optimization


def get_lr(step: int, *, learning_rate: float, warmup_steps: int, max_steps: int, min_lr_ratio: float,
           schedule: str = "cosine", decay_ratio: float = 0.2) -> float:
    """LR of optimizer step `step` (0-based): linear warmup to the peak, then either a cosine to
    min_lr_ratio * peak ("cosine"), or the peak held until the last decay_ratio of the steps, which
    decay linearly to min_lr_ratio * peak ("wsd", warmup-stable-decay)."""
    min_lr = learning_rate * min_lr_ratio
    if step < warmup_steps:
        return learning_rate * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    if schedule == "wsd":
        decay_steps = round(decay_ratio * max_steps)
        decay_start = max(warmup_steps, max_steps - decay_steps)
        if step < decay_start:
            return learning_rate
        return learning_rate - (step - decay_start) / (max_steps - decay_start) * (learning_rate - min_lr)
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


def param_groups(model: torch.nn.Module, weight_decay: float, exclude: tuple = ()) -> list[dict]:
    """Decay the matrices and embeddings (dim >= 2); never biases and norm gains. Skips the params in `exclude`."""
    skip = {id(p) for p in exclude}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in skip]  # tied weights appear once
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def muon_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The 2-D weights of the transformer blocks: what Muon orthogonalises (never embeddings or the head)."""
    blocks = model.transformer.h
    return [p for p in blocks.parameters() if p.requires_grad and p.dim() == 2]


def build_optimizers(model: torch.nn.Module, args: TrainArguments, device: torch.device) -> list[torch.optim.Optimizer]:
    """[AdamW], or [Muon, AdamW] for optimizer=muon: the order of peak_lrs(args)."""
    adamw_kwargs = dict(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon, fused=device.type == "cuda")
    if args.optimizer == "adamw":
        return [torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.learning_rate, **adamw_kwargs)]
    hidden = muon_params(model)
    muon = torch.optim.Muon(hidden, lr=args.muon_learning_rate, momentum=args.muon_momentum,
                            weight_decay=args.muon_weight_decay)
    adamw = torch.optim.AdamW(param_groups(model, args.weight_decay, hidden), lr=args.learning_rate, **adamw_kwargs)
    return [muon, adamw]


def peak_lrs(args: TrainArguments) -> list[float]:
    """Each optimizer's peak LR, from the settings (never from a checkpoint's param groups)."""
    return [args.muon_learning_rate, args.learning_rate] if args.optimizer == "muon" else [args.learning_rate]


def set_lrs(optimizers: list, step: int, args: TrainArguments) -> float:
    """Apply the schedule to each optimizer from its own peak; return AdamW's LR (the one logged)."""
    schedule = dict(warmup_steps=args.warmup_steps, max_steps=args.max_steps, min_lr_ratio=args.min_lr_ratio,
                    schedule=args.lr_schedule, decay_ratio=args.decay_ratio)
    for optimizer, peak in zip(optimizers, peak_lrs(args), strict=True):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step, learning_rate=peak, **schedule)
    return get_lr(step, learning_rate=args.learning_rate, **schedule)


# ----------------------------------------------------------------------------------------------
# Checkpoints and metrics


class CheckpointManager:
    """output_dir/checkpoints/step_XXXXXXX folders, each complete or absent.

    A checkpoint is written into a hidden temporary folder and renamed into place only when every
    file is there, so a crash during saving leaves nothing that `latest()` would pick.
    """

    def __init__(self, root: Union[str, os.PathLike], keep_last_k: int = 0):
        self.root = Path(root)
        self.keep_last_k = keep_last_k
        self.links_kept = set()  # linked old checkpoints pruning skipped (and warned of once)

    def path(self, step: int) -> Path:
        return self.root / f"step_{step:07d}"

    def temp_path(self, step: int) -> Path:
        return self.root / f".tmp-step_{step:07d}"

    def steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            name = child.name
            if name.startswith("step_") and name[5:].isdigit() and (child / "trainer_state.json").is_file():
                found.append(int(name[5:]))
        return sorted(found)

    def latest(self) -> Optional[Path]:
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    def remove_partial(self):
        """Delete what an interrupted save left behind."""
        if self.root.is_dir():
            for child in self.root.glob(".tmp-step_*"):
                shutil.rmtree(child, ignore_errors=True)
            atomic_io.remove_leftovers(self.root)  # a step folder a killed commit was replacing

    def commit(self, step: int) -> Path:
        """Move a finished temporary folder into place (atomic rename), then prune old checkpoints."""
        final = atomic_io.replace(self.temp_path(step), self.path(step))  # also over a step re-saved after a resume
        if self.keep_last_k:
            for old in map(self.path, self.steps()[: -self.keep_last_k]):
                if not old.is_symlink():
                    shutil.rmtree(old)
                elif old not in self.links_kept:  # never deleted through, nor blocking the pruning of the others
                    self.links_kept.add(old)
                    print(f"gpt-train: warning: {old} is a symbolic link (to {os.readlink(old)}): not pruned by "
                          "keep_last_k, which deletes only real folders; remove it yourself", file=sys.stderr, flush=True)
        return final


class NonFiniteLossError(RunError):
    pass


def check_finite(records: list[dict], last_good: Optional[Path]):
    """Stop at the first NaN/inf loss, before anything is saved from the poisoned weights."""
    for record in records:
        if not math.isfinite(record["loss"]):
            where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was saved before it"
            raise NonFiniteLossError(
                f"training loss is {record['loss']} at step {record['step']}; stopping ({where}). "
                "Lower learning_rate, raise warmup_steps or check the data, then resume with --resume_from_checkpoint."
            )


# ----------------------------------------------------------------------------------------------
# Data, model and evaluation helpers


def ensure_tokenized(data_args: DataArguments, accelerator: Accelerator):
    """Tokenize tokenize_dataset into data_dir unless a complete manifest is there (a run killed while tokenizing left
    an incomplete one: the tokenizer resumes it). One process only: the others would wait on it in a collective that
    times out long before a large data set is tokenized."""
    manifest = Path(data_args.data_dir) / "manifest.json"
    # a manifest without a stream record was not written by an interrupted gpt-tokenize: complete
    if manifest.is_file() and token_shards.read_manifest(data_args.data_dir).get("stream", {"complete": True})["complete"]:
        return
    if data_args.tokenize_dataset is None:
        found = "is incomplete (gpt-tokenize was interrupted)" if manifest.is_file() else "not found"
        raise ConfigError(
            f"{manifest} {found}: tokenize first (gpt-tokenize ... {data_args.data_dir}) or set tokenize_dataset"
        )
    argv = ["--dataset", data_args.tokenize_dataset, "--output", data_args.data_dir]
    options = {"--name": data_args.tokenize_name, "--tokenizer": data_args.tokenize_tokenizer,
               "--shard-size": data_args.tokenize_shard_size, "--val-tokens": data_args.tokenize_val_tokens}
    for flag, value in options.items():
        if value is not None:
            argv += [flag, str(value)]
    if accelerator.num_processes > 1:
        raise ConfigError(f"{manifest} is missing or incomplete: with {accelerator.num_processes} processes, tokenize "
                          f"first in one process: gpt-tokenize {' '.join(argv)}")
    import tokenize_fineweb

    print(f"tokenizing {data_args.tokenize_dataset} into {data_args.data_dir}", flush=True)
    tokenize_fineweb.main(argv)


def load_pretrained(init_from: str, dropout: Optional[float]) -> GPTForCausalLM:
    """The weights to fine-tune: one of our checkpoints (output_dir/checkpoints/step_N), or a folder or Hub id of our
    GPT or of transformers' GPT2LMHeadModel (converted); `dropout` replaces the saved model's."""
    path = Path(init_from)
    if (path / "trainer_state.json").is_file():
        if not (path / "model.safetensors").is_file():
            refuse_pickle_weights(path, "init_from", patterns=("pytorch_model*.bin",))  # accelerate's pickle name
            if not (path / "pytorch_model_fsdp_0").is_dir():
                raise ConfigError(f"init_from={init_from!r}: the checkpoint has no model.safetensors; use another "
                                  "checkpoint of the run or its final/")
            raise ConfigError(f"init_from={init_from!r} is a sharded FSDP checkpoint; merge it into one file first: "
                              f"accelerate merge-weights {path / 'pytorch_model_fsdp_0'} <folder>, or use the run's final/")
        config = read_run_record(path / "trainer_state.json", required=("model_config",))["model_config"]
        model = GPTForCausalLM(GPTConfig.from_dict({**config, **({} if dropout is None else {"dropout": dropout})}))
        check_safetensors(path)
        return load_state_strictly(model, load_file(path / "model.safetensors"), f"init_from {init_from}")
    fix = "give the folder of a saved model instead of a Hub id"
    config = load_local_or_hub(AutoConfig.from_pretrained, init_from, "init_from", fix)
    if config.model_type == "gpt2":
        kwargs = {} if dropout is None else dict(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
        native = load_local_or_hub(partial(load_model, GPT2LMHeadModel.from_pretrained, what="init_from", **kwargs),
                                   init_from, "init_from", fix)
        return GPTForCausalLM.from_gpt2(native)
    if config.model_type == GPTConfig.model_type:
        kwargs = {} if dropout is None else {"dropout": dropout}
        return load_local_or_hub(partial(load_model, GPTForCausalLM.from_pretrained, what="init_from", **kwargs),
                                 init_from, "init_from", fix)
    raise ConfigError(f"init_from={init_from!r} is a {config.model_type!r} model; use our GPT or GPT-2")


def memory_bytes(device: torch.device) -> int:
    """The device's whole memory: a GPU's own, otherwise the machine's RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def meta_model(config: GPTConfig) -> GPTForCausalLM:
    """The model of `config` on the meta device: its tensors' shapes and sizes, no memory."""
    with torch.device("meta"):
        return GPTForCausalLM(config)


def check_fits(config: GPTConfig, device: torch.device):
    """Refuse a model whose fp32 weights, gradients and AdamW moments (16 bytes a parameter) exceed the device's memory,
    counted on the meta device, before a byte of it is allocated."""
    model = meta_model(config)
    n_params = model.num_parameters()
    needed = 16 * n_params + sum(b.numel() * b.element_size() for b in model.buffers())
    available = memory_bytes(device)
    if needed > available:
        sizes = ", ".join(f"{k}={getattr(config, k)}" for k in ("n_layer", "n_embd", "n_inner", "n_positions", "vocab_size"))
        raise ConfigError(
            f"the model ({sizes}) has {n_params:,} parameters: its weights, gradients and optimizer "
            f"states need {needed / 2**30:,.1f} GiB, more than the {available / 2**30:,.1f} GiB of this {device.type}; "
            "choose smaller sizes"
        )


def build_model(model_args: ModelArguments, vocab_size: int, eot_id: int, device: torch.device) -> GPTForCausalLM:
    if model_args.init_from is not None:
        model = load_pretrained(model_args.init_from, model_args.dropout).to(torch.float32)  # fp32 master weights
        model.set_attn_implementation(model_args.attn_implementation)
    else:
        overrides = {k: getattr(model_args, k) for k in MODEL_OVERRIDES if getattr(model_args, k) is not None}
        config = GPTConfig.from_preset(
            model_args.model_preset, vocab_size=vocab_size, bos_token_id=eot_id, eos_token_id=eot_id, **overrides
        )
        config._attn_implementation = model_args.attn_implementation
        check_fits(config, device)
        model = GPTForCausalLM(config)
    model.config.fused_loss = model_args.fused_loss
    if model_args.gradient_checkpointing:
        # transformers >= 5.23 names it activation checkpointing; gradient_checkpointing_enable is its deprecated alias
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    return model


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int, device) -> list[str]:
    """Top-k sampled completions, on a forked RNG so that training randomness is untouched."""
    devices = [device] if device.type == "cuda" else []
    completions = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=True,
                top_k=50, pad_token_id=tokenizer.eos_token_id,
            )
            completions.append(tokenizer.decode(out[0], skip_special_tokens=True))
    return completions


def _tensorboard_installed() -> bool:
    from accelerate.utils import is_tensorboard_available

    return is_tensorboard_available()


FINAL_RECORD = "training_record.json"  # gpt-push reads the card's facts from it


def export_final(accelerator: Accelerator, model, tokenizer, output_dir: Path, facts: dict):
    """output_dir/final: a Hugging Face folder (weights, config, code, tokenizer, generation config) and `facts`, the
    run as these weights left it (FINAL_RECORD), written in the same atomic step."""
    state_dict = accelerator.get_state_dict(model)  # gathers FSDP shards on the main process
    final = output_dir / "final"
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if accelerator.distributed_type == DistributedType.FSDP:
            # FSDP2 swaps the model's class for one of its own, which save_pretrained would ship as the remote code
            model_class = next(c for c in type(unwrapped).__mro__ if not issubclass(c, FSDPModule))
            unwrapped = model_class(unwrapped.config)
            unwrapped.load_state_dict(state_dict)
            state_dict = unwrapped.state_dict()  # tied weights share one tensor again: saved once
        then = "run the same command with --resume_from_checkpoint latest: it exports final/ from the last checkpoint"
        with writing(final, then), atomic_io.atomic_path(final) as tmp:
            unwrapped.save_pretrained(tmp, state_dict=state_dict, save_function=accelerator.save)
            publishable_tokenizer(tokenizer, unwrapped.config.n_positions).save_pretrained(tmp)
            eot = tokenizer.eos_token_id
            GenerationConfig(
                do_sample=True, top_k=50, temperature=1.0, max_new_tokens=128,
                bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
            ).save_pretrained(tmp)
            (tmp / FINAL_RECORD).write_text(json.dumps(facts, indent=2))
    accelerator.wait_for_everyone()
    return final


# ----------------------------------------------------------------------------------------------
# Start-up: everything before the first step


@dataclass
class Run:
    """What start_up() builds and the loop's steps share."""

    args: TrainArguments
    accelerator: Accelerator
    model: torch.nn.Module  # as prepared by accelerate (wrapped for DDP / FSDP)
    train_forward: Callable  # the compiled model, or the model itself
    eval_model: GPTForCausalLM  # the unwrapped module: evaluation and generation stay eager
    optimizers: list  # [AdamW] or [Muon, AdamW], as prepared by accelerate
    tokenizer: Any
    train_loader: token_shards.ShardDataLoader
    val_loader: token_shards.ShardDataLoader
    checkpoints: CheckpointManager
    metrics: MetricsLog
    tracker: str
    accum: int  # micro-steps per optimizer step
    settings: dict  # every field of the three argument classes, as recorded in checkpoints
    data: dict  # data_identity() of the shards, as recorded in checkpoints
    hardware: dict
    flops_per_token: float
    peak_tflops: Optional[float]  # dense peak of one device; None where unknown (CPU)
    start_step: int
    last_good: Optional[Path]  # the newest checkpoint, named when the loss turns non-finite
    elapsed_before: float  # training seconds before the checkpoint this run resumed from
    clock_start: float = field(default_factory=time.perf_counter)


class _TiedWeightsNotice(logging.Filter):
    """accelerate's "Removed shared tensor {'lm_head.weight'} while saving" at every checkpoint: the output layer
    is tied to the embedding by design and from_pretrained / load_state re-tie it, so there is nothing to check."""

    def filter(self, record):
        return "Removed shared tensor {'lm_head.weight'} while saving" not in record.getMessage()


def quiet_libraries():
    """No library output between the trainer's own lines: transformers' per-save "Writing model shards" bars,
    accelerate's tied-weights notice."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNotice())


def check_devices():
    """Refuse, before any process group forms, more processes on this machine than it has devices: GPUs, or
    without a GPU, CPU cores (e.g. an 8-GPU accelerate config on a laptop)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices, kind = (gpus, "GPU(s)") if gpus else (os.cpu_count() or 1, "CPU cores and no GPU")
    if local > devices:
        raise ConfigError(
            f"{local} processes were launched on this machine, which has {devices} {kind}: launch at most {devices} "
            "(accelerate launch --num_processes N, or a config from configs/accelerate/ that fits this machine; "
            "one process needs no launcher: gpt-train --config ...)"
        )


def make_accelerator(args: TrainArguments) -> tuple[Accelerator, str]:
    """The Accelerator and the tracker it logs to ("none" for no tracker)."""
    check_devices()
    output_dir = Path(args.output_dir)
    tracker = args.tracker
    if tracker == "auto":
        tracker = "tensorboard" if _tensorboard_installed() else "none"
    accelerator = Accelerator(
        # without a GPU, `accelerate launch --multi_gpu` processes must ask for CPU to get DDP over gloo
        cpu=not torch.accelerator.is_available(),
        mixed_precision=args.mixed_precision,
        log_with=None if tracker == "none" else tracker,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs")),
    )
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and accelerator.distributed_type == DistributedType.MULTI_CPU:
        enable_fsdp_on_cpu(accelerator)
    return accelerator, tracker


def autocast_only(accelerator: Accelerator, model):
    """Keep the autocast accelerate's mixed precision wraps the prepared model's forward in, and drop the conversion
    of every bf16/fp16 output to float32 it adds on top. The model computes its loss in float32 itself, so that
    conversion's one product is a float32 copy of the (B, T, V) logits at every micro-step and evaluation batch (13 GB
    at 64 x 1024 x 50257) that nothing reads; compiled, it is an output of the graph and is written all the same.
    Upcasting bf16 is exact: no number the run reads changes."""
    inner = accelerator.unwrap_model(model)
    original = inner.__dict__.get("_original_forward")  # accelerate's record of the forward it wrapped
    if original is None:  # full precision: the forward is left as defined
        return
    autocast = get_mixed_precision_context_manager(accelerator.native_amp, accelerator.autocast_handler)
    inner.forward = MethodType(autocast(original.__func__), inner)


@contextmanager
def model_per_optimizer(accelerator: Accelerator):
    """accelerate (1.15) saves and loads an FSDP run's i-th optimizer with its i-th prepared model; Muon gives the one
    model two optimizers, so pair each with it while saving or loading (its shards are then written once per pair)."""
    models = accelerator._models
    if accelerator.distributed_type == DistributedType.FSDP and len(accelerator._optimizers) > len(models) == 1:
        accelerator._models = models * len(accelerator._optimizers)
    try:
        yield
    finally:
        accelerator._models = models


def enable_fsdp_on_cpu(accelerator: Accelerator):
    """Run an FSDP config on CPU processes as FSDP, not silently as DDP.

    accelerate (1.15, AcceleratorState.__init__) switches to FSDP only from GPU-like multi-device types; processes
    without a GPU stay MULTI_CPU and train as DDP. FSDP2 (`fully_shard`) itself works over gloo, so set the state as
    accelerate would have: the plugin from the FSDP_* variables `accelerate launch` exported, and the FSDP type."""
    from accelerate.state import PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    # AcceleratorState() re-reads the type from PartialState's shared state: set both, as accelerate does
    accelerator.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def on_main(accelerator: Accelerator, fn: Callable):
    """fn() on the main process only (file checks, the lock); its result, or its refusal, reaches every process."""
    from accelerate.utils import broadcast_object_list

    result = error = None
    if accelerator.is_main_process:
        try:
            result = fn()
        except (UserError, RunError) as err:
            error = err
    result, error = broadcast_object_list([result, error])
    if error is not None:
        raise error
    return result


def checkpoint_damage(path: Path, world_size: int) -> Optional[str]:
    """What makes a checkpoint folder unusable (a truncated, missing or foreign file), or None when it is whole.

    Every file is opened the way it will be loaded: weights-only (no pickle runs code), memory-mapped (cheap)."""
    try:
        state = read_run_record(path / "trainer_state.json", required=("step", "train_loader"))
        missing = [name for name in state.get("files", []) if not (path / name).is_file()]
        if missing:
            raise UserError(f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}: saved with the checkpoint, "
                            "now missing")
        check_pickles(path)  # FSDP sharded folders: .metadata is a pickle
        check_safetensors(path)
        # accelerate swallows a damaged RNG file and resumes with other dropout masks: check them here
        expected = [path / f"random_states_{i}.pkl" for i in range(world_size)] if state.get("world_size") == world_size else []
        pickles = {file for pattern in (*PICKLE_WEIGHTS, "*.pkl") for file in path.glob(pattern)}  # scaler.pt too
        for file in sorted({*pickles, *expected}):
            load_weights_only(file, mmap=True)
    except Exception as err:  # noqa: BLE001  anything that fails to load makes the checkpoint unusable
        return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
    return None


def resume_point(args: TrainArguments, checkpoints: CheckpointManager, world_size: int) -> Optional[Path]:
    """The checkpoint to resume from, or None for a fresh start; never silently trains over an existing run.

    With 'latest', a damaged newest checkpoint is reported and the previous whole one is used."""
    resume = args.resume_from_checkpoint
    if resume is None and checkpoints.latest() is not None and not args.overwrite_output_dir:
        raise ConfigError(
            f"{args.output_dir} already holds checkpoints (latest {checkpoints.latest()}); pass "
            "--resume_from_checkpoint latest to continue that run, --overwrite_output_dir to start afresh, "
            "or choose another output_dir"
        )
    if resume is None or (resume == "latest" and not checkpoints.steps()):
        earlier = [name for name in ("final", "metrics.jsonl") if (Path(args.output_dir) / name).exists()]
        if earlier and not args.overwrite_output_dir:
            raise ConfigError(
                f"{args.output_dir} holds an earlier run ({', '.join(earlier)}) and no checkpoint to resume from; "
                "pass --overwrite_output_dir to replace it, or choose another output_dir"
            )
        return None
    if resume == "latest":
        for step in reversed(checkpoints.steps()):
            damage = checkpoint_damage(checkpoints.path(step), world_size)
            if damage is None:
                return checkpoints.path(step)
            print(f"gpt-train: warning: checkpoint {checkpoints.path(step)} is damaged ({damage}); "
                  "falling back to the previous one", file=sys.stderr, flush=True)
        raise RunError(f"every checkpoint in {checkpoints.root} is damaged; pass --overwrite_output_dir to start afresh")
    resume = Path(resume)
    if not (resume / "trainer_state.json").is_file():
        raise ConfigError(f"resume_from_checkpoint={str(resume)!r} is not a complete checkpoint folder")
    damage = checkpoint_damage(resume, world_size)
    if damage is not None:
        raise RunError(f"checkpoint {resume} is damaged ({damage}); resume from an earlier one")
    return resume


def lock_output_dir(accelerator: Accelerator, output_dir: Path):
    """The main process locks output_dir until the command ends: a second run into it is refused with this pid."""
    on_main(accelerator, lambda: FolderLock(output_dir, "output_dir").acquire() and None)


# what a resumed run must share with its checkpoint (evaluation, logging, hardware and micro-batch size may change)
RESUME_SETTINGS = ("max_steps", "warmup_steps", "learning_rate", "min_lr_ratio", "weight_decay", "adam_beta1", "adam_beta2",
                   "adam_epsilon", "grad_clip", "total_batch_tokens", "seq_len", "optimizer", "lr_schedule", "decay_ratio",
                   "muon_learning_rate", "muon_momentum", "muon_weight_decay")
# model config entries that do not change the trained function
MODEL_CONFIG_IGNORED = {"transformers_version", "architectures", "auto_map", "dtype", "torch_dtype", "use_cache",
                        "_name_or_path", "_attn_implementation", "output_hidden_states", "output_attentions", "return_dict",
                        "id2label", "label2id", "problem_type", "chunk_size_feed_forward", "is_encoder_decoder",
                        "fused_loss"}


def data_identity(data_dir, manifest: dict) -> dict:
    """The data set as the checkpoint records it: its folder and a hash of its tokenizer and every shard's sha256."""
    shards = [[s["split"], s["file"], s["tokens"], s["sha256"]] for s in manifest["shards"]]
    blob = json.dumps({"tokenizer": manifest["tokenizer"]["hash"], "shards": shards}, sort_keys=True)
    return {"dir": str(Path(data_dir).resolve()), "sha256": hashlib.sha256(blob.encode()).hexdigest()}


def config_changes(state: dict, settings: dict, model_config: dict, data: dict) -> dict[str, tuple]:
    """{setting: (checkpoint's value, this run's)} for what decides the training and differs from the checkpoint."""
    saved, changes = state.get("config", {}), {}
    for key in RESUME_SETTINGS:
        if key in saved and saved[key] != settings[key]:
            changes[key] = (saved[key], settings[key])
    saved_model = state.get("model_config", {})
    for key in sorted(saved_model.keys() & model_config.keys() - MODEL_CONFIG_IGNORED):
        if saved_model[key] != model_config[key]:
            changes[f"model {key}"] = (saved_model[key], model_config[key])
    saved_data = state.get("data")
    if saved_data is not None and saved_data["sha256"] != data["sha256"]:
        changes["data set"] = tuple(f"{d['dir']} (sha256 {d['sha256'][:12]})" for d in (saved_data, data))
    return changes


def weight_shapes(config: dict) -> Optional[dict]:
    """{tensor name: shape} of what a checkpoint of the model a config dict builds holds (a tied head is not saved), on
    the meta device (no memory); None if the config builds no model."""
    try:
        model = meta_model(GPTConfig.from_dict({k: v for k, v in config.items() if k not in MODEL_CONFIG_IGNORED}))
    except (ValueError, TypeError):
        return None
    tied = set(model.all_tied_weights_keys or {})
    return {name: tuple(t.shape) for name, t in model.state_dict().items() if name not in tied}


def shape_changes(saved: dict, now: dict) -> dict[str, tuple]:
    """{model setting: (checkpoint's value, this run's)} for the changed settings that change a weight's shape (those
    that alone do; all changed ones where only together they do): a checkpoint cannot be loaded into such a model."""
    before = weight_shapes(saved)
    if before is None or weight_shapes(now) == before:
        return {}
    changed = sorted(k for k in saved.keys() & now.keys() - MODEL_CONFIG_IGNORED if saved[k] != now[k])
    alone = [k for k in changed if weight_shapes({**saved, k: now[k]}) != before]
    return {k: (saved[k], now[k]) for k in alone or changed}


def check_shapes(path: Path, state: dict, model_config: dict):
    """Refuse a resume into a model whose weights the checkpoint's do not fit, even when changes are allowed."""
    shapes = shape_changes(state.get("model_config", {}), model_config)
    if shapes:
        listed = "; ".join(f"{key}: checkpoint {old!r}, now {new!r}" for key, (old, new) in shapes.items())
        vocab = " (vocab_size is the data set's tokenizer's)" if "vocab_size" in shapes else ""
        raise ConfigError(f"resuming {path} would change which weights it holds or their shapes: {listed}{vocab}. These "
                          "settings cannot change on resume, even with --allow_config_change: resume with the "
                          "checkpoint's values, or start a new run in another output_dir")


def check_resume(path: Path, state: dict, changes: dict, args: TrainArguments):
    """Refuse a resume that has nothing to train, or that would silently change the run (unless allowed)."""
    if args.max_steps < state["step"]:
        raise ConfigError(f"max_steps={args.max_steps} is below step {state['step']} of the checkpoint {path}: "
                          f"nothing to train; pass max_steps >= {state['step']}")
    if changes and not args.allow_config_change:
        listed = "; ".join(f"{key}: checkpoint {old!r}, now {new!r}" for key, (old, new) in changes.items())
        raise ConfigError(f"resuming {path} would silently change {listed}. Resume with the checkpoint's values, "
                          "or pass --allow_config_change to train on with the new ones (recorded in metrics.jsonl)")


def load_checkpoint(accelerator: Accelerator, path: Path, state: dict, train_loader, changes: dict):
    """Restore weights, optimizer, RNG states and the data position (a changed data set is read from its start)."""
    with model_per_optimizer(accelerator):
        accelerator.load_state(str(path))
    if "data set" in changes:
        accelerator.print(f"the data set changed since {path}: reading the new one from its start")
        return
    try:
        train_loader.load_state_dict(state["train_loader"])  # its position is global: any world size resumes it
    except ValueError as err:
        raise ConfigError(f"resume_from_checkpoint={str(path)!r}: {err}") from None


def start_trackers(accelerator: Accelerator, tracker: str, args: TrainArguments, settings: dict):
    if tracker != "none":
        # TensorBoard's hparams take scalars only
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in settings.items()}
        accelerator.init_trackers(args.run_name or Path(args.output_dir).resolve().name, config=flat)


def check_evaluation(args: TrainArguments, val_loader: token_shards.ShardDataLoader):
    """What the first evaluation needs, checked before the first step rather than after eval_interval steps."""
    if not args.eval_interval:
        return
    if args.val_batches > val_loader.chunks_per_epoch:
        raise ConfigError(
            f"val_batches={args.val_batches} but the val split holds {val_loader.chunks_per_epoch} batches of "
            f"micro_batch_size x seq_len = {args.micro_batch_size} x {args.seq_len}; use val_batches <= "
            f"{val_loader.chunks_per_epoch} (or 0 for no validation loss)"
        )
    if args.hellaswag:
        from eval.data import load_task_docs

        load_task_docs("hellaswag", args.hellaswag_data_dir, args.hellaswag_limit)
def open_data(data_args: DataArguments, accelerator: Accelerator, output_dir: Path) -> tuple[dict, Any]:
    """The data folder's manifest and tokenizer, its shards verified (tokenized first by a single process)."""
    ensure_tokenized(data_args, accelerator)
    manifest = token_shards.read_manifest(data_args.data_dir)
    tokenizer = token_shards.load_tokenizer(data_args.data_dir)
    if accelerator.is_local_main_process:  # one reader per node, and once while the shards stay unchanged
        record = output_dir / "data-verified" / f"{socket.gethostname()}.json"
        if token_shards.verify_shards(data_args.data_dir, record=record):
            print(f"verified the sha256 of every shard in {data_args.data_dir} (recorded in {record})", flush=True)
    return manifest, tokenizer


def make_loaders(args: TrainArguments, data_dir: str, tokenizer, accelerator: Accelerator):
    """This process's train and val loaders; the manifest is checked against the tokenizer folder beside it."""
    kwargs = dict(
        batch_size=args.micro_batch_size, seq_len=args.seq_len, rank=accelerator.process_index,
        world_size=accelerator.num_processes, seed=args.seed, vocab_size=len(tokenizer),
        eot_id=token_shards.eot_id(tokenizer), tokenizer_hash=token_shards.tokenizer_hash(tokenizer), verify_checksums=False,
    )
    return (token_shards.ShardDataLoader(data_dir, split="train", **kwargs),
            token_shards.ShardDataLoader(data_dir, split="val", shuffle=False, **kwargs))


def check_fp8(device: torch.device):
    """--fp8 needs torchao and a CUDA GPU with float8 matmuls (compute capability 8.9 or newer)."""
    if device.type != "cuda":
        raise ConfigError(f"--fp8 true needs a CUDA GPU of compute capability >= 8.9 (Ada, Hopper or newer); "
                          f"this run is on {device.type}: drop --fp8")
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        raise ConfigError(f"--fp8 true needs compute capability >= 8.9 (Ada, Hopper or newer); "
                          f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}: drop --fp8")
    if importlib.util.find_spec("torchao") is None:
        raise ConfigError('--fp8 true needs torchao, which is not installed: pip install -e ".[gpu]", or drop --fp8')


def float8_filter(module: torch.nn.Module, fqn: str) -> bool:
    """The linear layers trained in float8: those of the blocks (not the embeddings or the head), dims divisible by 16."""
    return (isinstance(module, torch.nn.Linear) and fqn.startswith("transformer.h.")
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def to_float8(model: torch.nn.Module) -> torch.nn.Module:
    """Swap the blocks' nn.Linear for torchao's Float8Linear: the same parameters, names and dtypes (so checkpoints
    and final/ are ordinary weights), float8 matmuls with dynamic scaling in forward and backward."""
    from torchao.float8 import convert_to_float8_training

    return convert_to_float8_training(model, module_filter_fn=float8_filter)


def float8_note(model: torch.nn.Module) -> str:
    """' + float8 in N linear layers' for the start-up line when --fp8 converted any, else ''."""
    count = sum(any(cls.__name__ == "Float8Linear" for cls in type(module).__mro__) for module in model.modules())
    return f" + float8 in {count} linear layers" if count else ""


def prepare_output_dir(args: TrainArguments, checkpoints: CheckpointManager, metrics: MetricsLog, fresh: bool,
                       start_step: int, changes: dict):
    """Main process: clear what killed writers left, cut metrics.jsonl back to the checkpoint's step (a resumed run
    redoes the steps after it) and record the allowed changes; a fresh start with overwrite_output_dir first removes
    the earlier run's results."""
    output_dir = Path(args.output_dir)
    if fresh and args.overwrite_output_dir:  # asked for: the earlier run's results go
        atomic_io.remove(checkpoints.root)
        atomic_io.remove(output_dir / "final")
        atomic_io.remove(metrics.path)
    atomic_io.refuse_link(output_dir / "final")  # replaced at the end of the run: refused now, not after training
    checkpoints.remove_partial()
    atomic_io.remove_leftovers(output_dir)  # a killed export's final/ or metrics.jsonl rewrite
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics.truncate(start_step)
    if changes:
        metrics.append([{"step": start_step, "config_change": {k: list(v) for k, v in changes.items()}}])


def start_up(argv=None) -> Run:
    """Settings, accelerator, data, model, optimizer and, when resuming, the checkpoint."""
    model_args, data_args, args = parse_args(argv)
    output_dir = Path(args.output_dir)
    quiet_libraries()
    accelerator, tracker = make_accelerator(args)
    lock_output_dir(accelerator, output_dir)
    device, world = accelerator.device, accelerator.num_processes
    if args.fp8:
        check_fp8(device)
    accum = gradient_accumulation_steps(args.total_batch_tokens, args.micro_batch_size, args.seq_len, world)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    # data first: the tokenizer and vocabulary come with the shards
    manifest, tokenizer = open_data(data_args, accelerator, output_dir)
    set_seed(args.seed)  # the same initial weights on every process
    model = build_model(model_args, manifest["vocab_size"], manifest["eot_id"], device)
    if args.fp8:
        model = to_float8(model)
    if args.seq_len > model.config.n_positions:
        raise ConfigError(f"seq_len={args.seq_len} is longer than the model's n_positions={model.config.n_positions}")
    if model.config.vocab_size != len(tokenizer):
        raise ConfigError(f"the model has vocab_size={model.config.vocab_size}, the tokenizer of {data_args.data_dir} "
                          f"{len(tokenizer)} tokens: tokenize the data with the model's tokenizer")
    train_loader, val_loader = make_loaders(args, data_args.data_dir, tokenizer, accelerator)
    check_evaluation(args, val_loader)

    n_params, flops_token = model.num_parameters(), flops_per_token(model.config, args.seq_len)  # before FSDP shards it
    model_config, data = model.config.to_dict(), data_identity(data_args.data_dir, manifest)
    model, *optimizers = accelerator.prepare(model, *build_optimizers(model, args, device))
    autocast_only(accelerator, model)

    checkpoints = CheckpointManager(output_dir / "checkpoints", args.keep_last_k)
    metrics = MetricsLog(output_dir / "metrics.jsonl")
    settings = {k: v for obj in (model_args, data_args, args) for k, v in asdict(obj).items()}
    resume, state, changes = on_main(accelerator, lambda: resume_point(args, checkpoints, world)), {}, {}
    if resume is not None:
        state = read_run_record(resume / "trainer_state.json", required=("step", "train_loader"))
        changes = config_changes(state, settings, model_config, data)
        check_shapes(resume, state, model_config)
        check_resume(resume, state, changes, args)
        load_checkpoint(accelerator, resume, state, train_loader, changes)
    start_step = state.get("step", 0)
    on_main(accelerator, lambda: prepare_output_dir(args, checkpoints, metrics, resume is None, start_step, changes))
    if resume is not None:
        accelerator.print(f"resumed from {resume} (step {start_step}, {state.get('tokens', 0):,} tokens)")

    start_trackers(accelerator, tracker, args, settings)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or device.type
    compute_dtype = accelerator.mixed_precision if accelerator.mixed_precision in ("bf16", "fp16") else "fp32"
    accelerator.print(
        f"{n_params:,} parameters | {world} process(es) x {accum} micro-step(s) x {args.micro_batch_size} x "
        f"{args.seq_len} = {args.total_batch_tokens:,} tokens/step | {accelerator.distributed_type} on {device}, "
        f"{accelerator.mixed_precision}{float8_note(model)} | steps {start_step} -> {args.max_steps}"
    )
    return Run(
        args=args, accelerator=accelerator, model=model,
        # compile the training forward only: evaluation and generation use the eager module
        train_forward=torch.compile(model) if args.compile else model, eval_model=accelerator.unwrap_model(model),
        optimizers=optimizers, tokenizer=tokenizer, train_loader=train_loader, val_loader=val_loader,
        checkpoints=checkpoints, metrics=metrics, tracker=tracker, accum=accum, settings=settings, data=data,
        hardware=dict(device=device_name, processes=world, distributed=str(accelerator.distributed_type)),
        flops_per_token=flops_token,
        peak_tflops=peak_tflops(device_name, compute_dtype) if device.type == "cuda" else None,
        start_step=start_step, last_good=resume, elapsed_before=state.get("elapsed_seconds", 0.0),
    )


# ----------------------------------------------------------------------------------------------
# The loop: one optimizer step, then a log line, an evaluation and a checkpoint when they are due


def train_step(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over `accum` micro-batches (the LRs already set): (mean loss, gradient norm), on the device."""
    accelerator, model, device = run.accelerator, run.model, run.accelerator.device
    loss_sum = torch.zeros((), device=device)
    for micro_step in range(run.accum):
        x, y = run.train_loader.next_batch()
        if device.type == "cuda":
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        # gradients are all-reduced on the last micro-step only
        with accelerator.no_sync(model) if micro_step < run.accum - 1 else nullcontext():
            loss = run.train_forward(input_ids=x, labels=y, shift_labels=y).loss / run.accum
            accelerator.backward(loss)
        loss_sum += loss.detach()
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), run.args.grad_clip or float("inf"))
    if isinstance(grad_norm, DTensor):  # FSDP2's norm: already reduced over the shards
        grad_norm = grad_norm.full_tensor()
    for optimizer in run.optimizers:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm


def eval_due(args: TrainArguments, step: int) -> bool:
    return args.eval_interval > 0 and (step % args.eval_interval == 0 or step == args.max_steps)


def save_due(args: TrainArguments, step: int) -> bool:
    return (args.save_interval > 0 and step % args.save_interval == 0) or step == args.max_steps


def collect_records(run: Run, pending: list, since_time: float, since_step: int) -> list[dict]:
    """The metrics records of the pending steps, in one host sync (losses averaged over the processes).

    Stops on a non-finite loss; the last record also gets the throughput since (since_time, since_step)."""
    args, accelerator = run.args, run.accelerator
    losses = accelerator.reduce(torch.stack([p[2] for p in pending]), reduction="mean").tolist()
    norms = torch.stack([p[3].float() for p in pending]).tolist()
    records = [
        dict(step=s, loss=l, lr=r, grad_norm=n, tokens=s * args.total_batch_tokens)
        for (s, r, _, _), l, n in zip(pending, losses, norms)
    ]
    check_finite(records, run.last_good)
    last = records[-1]
    last["tokens_per_sec"] = (last["step"] - since_step) * args.total_batch_tokens / (time.perf_counter() - since_time)
    if run.peak_tflops is not None:
        last["mfu"] = run.flops_per_token * last["tokens_per_sec"] / (run.peak_tflops * 1e12 * accelerator.num_processes)
    return records


def maybe_eval(run: Run, step: int) -> dict:
    """Validation loss, HellaSwag and sampled completions when an evaluation is due after `step`, else {}."""
    args, accelerator, model = run.args, run.accelerator, run.eval_model
    if not eval_due(args, step):
        return {}
    model.eval()
    results = {}
    if args.val_batches:
        results["val_loss"] = mean_loss(model, run.val_loader, args.val_batches, accelerator)
    if args.hellaswag:
        scores = run_tasks(model, run.tokenizer, tasks=["hellaswag"], data_dir=args.hellaswag_data_dir,
                           scoring=args.hellaswag_scoring, limit=args.hellaswag_limit, accelerator=accelerator)["hellaswag"]
        results["hellaswag_acc"], results["hellaswag_acc_norm"] = scores["acc"], scores["acc_norm"]
    # FSDP shards the weights: every process must take part in generation
    if args.sample_prompts and (accelerator.is_main_process or accelerator.distributed_type == DistributedType.FSDP):
        results["samples"] = sample(model, run.tokenizer, args.sample_prompts, args.sample_max_new_tokens,
                                    args.seed + step, accelerator.device)
    model.train()
    return results


def report(run: Run, records: list[dict], progress: tqdm):
    """Print the log line (and samples), append to metrics.jsonl and send the records to the tracker."""
    last = records[-1]
    # the printed loss is the mean since the previous line: single small batches are noisy
    interval_loss = sum(r["loss"] for r in records) / len(records)
    line = (f"step {last['step']:6d} | loss {interval_loss:.4f} | lr {last['lr']:.3e} | norm {last['grad_norm']:.3f} | "
            f"tok/s {last['tokens_per_sec']:,.0f}")
    if "mfu" in last:
        line += f" | mfu {last['mfu']:.1%}"
    if "val_loss" in last:
        line += f" | val {last['val_loss']:.4f}"
    if "hellaswag_acc_norm" in last:
        line += f" | hellaswag {last['hellaswag_acc_norm']:.4f}"
    if run.accelerator.is_main_process:
        progress.write(line)
        for prompt_completion in last.get("samples", []):
            progress.write(f"  sample: {prompt_completion!r}")
        run.metrics.append(records)
        progress.set_postfix(loss=f"{interval_loss:.4f}")
    if run.tracker != "none":
        for record in records:
            values = {k: v for k, v in record.items() if k not in ("step", "samples")}
            values.update({f"sample_{i}": text for i, text in enumerate(record.get("samples", []))})
            run.accelerator.log(values, step=record["step"])


def resume_hint(run: Run) -> str:
    """How to go on from the newest checkpoint: the advice every stopped run ends with."""
    if run.last_good is None:
        return "no checkpoint was saved yet: run the same command with --overwrite_output_dir to start again"
    step = read_run_record(run.last_good / "trainer_state.json", required=("step",))["step"]
    return f"run the same command with --resume_from_checkpoint latest to continue from {run.last_good} (step {step})"


def check_weights_finite(run: Run, step: int):
    """Nothing is saved from weights holding NaN or inf (a loss can stay finite while they break)."""
    bad = nonfinite_weights(run.model.named_parameters())  # this process's shard under FSDP
    count = run.accelerator.reduce(torch.tensor(len(bad), device=run.accelerator.device), reduction="sum").item()
    if count:
        raise NonFiniteLossError(
            f"the weights hold NaN or inf after step {step} ({bad[0] if bad else 'on another process'}); nothing was "
            "saved from them. Lower learning_rate or raise warmup_steps, then " + resume_hint(run)
        )


def run_facts(run: Run, step: int) -> dict:
    """The run after `step`: what a checkpoint's trainer_state.json and final/'s record say of it."""
    args = run.args
    return dict(
        step=step, tokens=step * args.total_batch_tokens, world_size=run.accelerator.num_processes,
        total_batch_tokens=args.total_batch_tokens, seq_len=args.seq_len,
        elapsed_seconds=run.elapsed_before + time.perf_counter() - run.clock_start, hardware=run.hardware,
        tokenizer_hash=token_shards.tokenizer_hash(run.tokenizer), model_config=run.eval_model.config.to_dict(),
        config=run.settings, data=run.data,
    )


def maybe_save(run: Run, step: int):
    """Checkpoint after `step` when one is due: accelerate's state plus trainer_state.json, written last."""
    args, accelerator = run.args, run.accelerator
    if not save_due(args, step):
        return
    check_weights_finite(run, step)
    tmp = run.checkpoints.temp_path(step)
    with writing(f"checkpoint {tmp}", resume_hint(run)):
        with model_per_optimizer(accelerator):
            accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        state = dict(run_facts(run, step), train_loader=run.train_loader.state_dict(), files=files)
        # written last: a folder without it is never picked by a resume
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        run.checkpoints.commit(step)
    accelerator.wait_for_everyone()
    run.last_good = run.checkpoints.path(step)


def main(argv=None):
    run_cli("gpt-train", train, argv)


def train(argv=None):
    run = start_up(argv)
    args = run.args
    final = Path(args.output_dir) / "final"
    if run.start_step >= args.max_steps and (final / "config.json").is_file():
        run.accelerator.print(f"{args.output_dir} already finished: {run.last_good} is step {run.start_step} of "
                              f"max_steps={args.max_steps} and {final} was exported from it; nothing to do "
                              "(raise --max_steps with --allow_config_change to train on, or pick another --output_dir)")
        run.accelerator.end_training()
        return
    run.model.train()
    pending = []  # (step, lr, loss, grad norm) of the steps not yet logged; the tensors stay on the device
    since = (time.perf_counter(), run.start_step)  # throughput counts from the previous log line
    # a bar on a terminal; in a log file the log lines are the progress, without bar fragments between them
    progress = tqdm(total=args.max_steps, initial=run.start_step, desc="train", dynamic_ncols=True,
                    disable=not (run.accelerator.is_main_process and sys.stderr.isatty()))
    step = run.start_step
    try:
        for step in range(run.start_step, args.max_steps):
            lr = set_lrs(run.optimizers, step, args)
            loss, grad_norm = train_step(run)
            done = step + 1
            pending.append((done, lr, loss, grad_norm))
            progress.update(1)
            if done % args.log_interval and not eval_due(args, done) and not save_due(args, done):
                continue
            records = collect_records(run, pending, *since)  # the one host sync per log line
            pending = []
            records[-1].update(maybe_eval(run, done))
            report(run, records, progress)
            maybe_save(run, done)
            since = (time.perf_counter(), done)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted (Ctrl-C) during step {step + 1} of {args.max_steps}; {resume_hint(run)}") from None
    finally:
        progress.close()

    facts = run_facts(run, max(run.start_step, args.max_steps))
    export_final(run.accelerator, run.model, run.tokenizer, Path(args.output_dir), facts)
    run.accelerator.print(f"done: {args.max_steps} steps; Hugging Face folder in {final}")
    run.accelerator.end_training()


if __name__ == "__main__":
    main()
