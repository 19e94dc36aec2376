"""Publish a trained GPT: checkpoint -> a Hub-ready folder (weights, code, tokenizer, model card) -> the Hub.

    gpt-push --checkpoint runs/gpt2/final --repo-id me/gpt2-fineweb-edu --dry-run --output-dir out/hub
    gpt-push --checkpoint runs/gpt2/checkpoints/step_0019073 --repo-id me/gpt2-fineweb-edu --native --private

The input is either a Hugging Face folder (what the trainer writes to output_dir/final) or a training
checkpoint (output_dir/checkpoints/step_XXXXXXX: accelerate save_state + trainer_state.json). The run
folder around it (metrics.jsonl, eval results JSON, PNG plots) fills the model card. The Hub token comes
from HF_TOKEN or `hf auth login`; this script never prints or writes it.
"""

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HFValidationError, HfHubHTTPError
from huggingface_hub.utils import validate_repo_id
from transformers import GenerationConfig

import atomic_io
from cli_guard import (RunError, check_pickles, check_safetensors, load_model, load_state_strictly,
                       load_weights_only, missing_local_folder, nonfinite_weights, refuse_pickle_weights, run_cli,
                       writing)
from run_records import MetricsLog, read_run_record
from modeling_gpt import GPTConfig, GPTForCausalLM
from modeling_gpt.convert import native_class_name
from modeling_gpt.network import require_hub
from modeling_gpt.tokenizer import gpt2_tokenizer, publishable_tokenizer

PROMPTS = ("The meaning of life is", "In physics, energy is", "The best way to learn a new language is")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
CONFIG_KEYS = ("architectures", "auto_map", "model_type", "transformers_version", "dtype", "torch_dtype")
# what `accelerate save_state` names the first model's weights: plain/DDP, FSDP full and FSDP sharded state dicts
ACCELERATE_WEIGHTS = ("model.safetensors", "pytorch_model_fsdp.bin", "pytorch_model_fsdp_0")
MODEL_OVERRIDES = ("n_layer", "n_head", "n_embd", "n_inner", "n_positions", "dropout", "rope_theta")  # training args
FINAL_RECORD = "training_record.json"  # what train_accelerate.py writes into final/ together with the weights
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile prefixes in a wrapped model's state dict


@dataclass
class Source:
    """A model to publish and everything known about how it was made."""

    model: GPTForCausalLM
    tokenizer: object
    run_dir: Path | None = None
    trainer_state: dict = field(default_factory=dict)
    metrics: list = field(default_factory=list)  # metrics.jsonl rows up to the exported step
    data_source: dict | None = None  # the token shards' manifest "source": what gpt-tokenize read, as it recorded it
    path: Path | None = None  # the folder it was read from


def check_repo_id(repo_id: str) -> str:
    """The repo id if it is `namespace/name`, else a ValueError that says why."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"repo id {repo_id!r} must be 'namespace/name' (your user or organisation, a slash, the model name)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"repo id {repo_id!r} is not valid on the Hub: {err}") from None
    return repo_id


# ----------------------------------------------------------------------------- reading the input


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def _find_run_dir(path: Path) -> Path | None:
    # final/ and checkpoints/step_N/ sit inside the run folder that holds metrics.jsonl
    for folder in (path, path.parent, path.parent.parent):
        if (folder / "metrics.jsonl").is_file():
            return folder
    return None


def _final_record(folder: Path) -> dict:
    """The record the trainer wrote into final/ with its weights (step, tokens, time, hardware, settings): the facts
    of these weights, never of a newer checkpoint or a run still going. {} for a folder without one."""
    path = folder / FINAL_RECORD
    return read_run_record(path) if path.is_file() else {}


def _read_metrics(run_dir: Path | None, max_step: int | None) -> list[dict]:
    if run_dir is None:
        return []
    rows = MetricsLog(run_dir / "metrics.jsonl").read()
    return [r for r in rows if max_step is None or r["step"] <= max_step]


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    check_safetensors(path)
    return load_file(path)


def _checkpoint_state_dict(folder: Path) -> dict:
    """The model weights `accelerate save_state` wrote, with wrapper prefixes removed."""
    if (folder / "model.safetensors").is_file():
        state = _read_safetensors(folder / "model.safetensors")
    elif (folder / "model.safetensors.index.json").is_file():  # a sharded save_pretrained folder
        shards = set(_read_json(folder / "model.safetensors.index.json")["weight_map"].values())
        state = {k: v for shard in sorted(shards) for k, v in _read_safetensors(folder / shard).items()}
    elif (folder / "pytorch_model_fsdp.bin").is_file():
        state = load_weights_only(folder / "pytorch_model_fsdp.bin")
    elif (folder / "pytorch_model_fsdp_0").is_dir():
        from accelerate.utils import merge_fsdp_weights

        check_pickles(folder / "pytorch_model_fsdp_0")  # its .metadata is a pickle: plain records only, or refused
        with tempfile.TemporaryDirectory() as tmp:
            merge_fsdp_weights(str(folder / "pytorch_model_fsdp_0"), tmp, safe_serialization=True)
            state = _read_safetensors(Path(tmp) / "model.safetensors")
    else:
        found = sorted(p.name for p in folder.iterdir())
        raise ValueError(
            f"no model weights in {folder}: expected one of {ACCELERATE_WEIGHTS} (accelerate save_state) or "
            f"model.safetensors / model.safetensors.index.json (save_pretrained); found {found}"
        )
    for prefix in WRAPPER_PREFIXES:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _checkpoint_config(folder: Path, state: dict, run_dir: Path | None) -> tuple[GPTConfig, str]:
    """The model's config and where it came from.

    In order: trainer_state.json's "model_config" (GPTConfig.to_dict()), a config.json in the checkpoint or in the
    run's final/, else the preset and overrides in trainer_state.json's "config" with the data manifest's vocabulary.
    """
    if "model_config" in state:
        return GPTConfig.from_dict({k: v for k, v in state["model_config"].items() if k not in CONFIG_KEYS}), "trainer_state.json"
    for candidate in (folder / "config.json", *([run_dir / "final" / "config.json"] if run_dir else [])):
        if candidate.is_file():
            return GPTConfig.from_pretrained(candidate.parent), str(candidate)
    args = state.get("config", {})
    if "model_preset" in args and args.get("data_dir"):
        from token_shards import read_manifest

        manifest = read_manifest(args["data_dir"])
        overrides = {k: args[k] for k in MODEL_OVERRIDES if args.get(k) is not None}
        eot = manifest["eot_id"]
        config = GPTConfig.from_preset(args["model_preset"], vocab_size=manifest["vocab_size"], bos_token_id=eot, eos_token_id=eot, **overrides)
        return config, f"preset {args['model_preset']!r} in trainer_state.json"
    raise ValueError(
        f"cannot tell the model's shape for {folder}: trainer_state.json has no 'model_config' (nor 'config' with "
        "model_preset and data_dir), and there is no config.json in it or in the run's final/ folder"
    )


def _data_dirs(state: dict, run_dir: Path | None) -> list[Path]:
    """Where the run's token shards may be: its data_dir, as given or relative to the run folder's parent."""
    data_dir = state.get("config", {}).get("data_dir")
    if not data_dir:
        return []
    return [Path(data_dir), *([run_dir.parent / data_dir] if run_dir else [])]


def _data_source(state: dict, run_dir: Path | None) -> dict | None:
    """What the model was trained on, as gpt-tokenize recorded it in the shards' manifest (None: not known)."""
    if isinstance(state.get("data_source"), dict):
        return state["data_source"]
    for folder in _data_dirs(state, run_dir):
        if (folder / "manifest.json").is_file():
            return _read_json(folder / "manifest.json").get("source")
    return None


def _load_tokenizer(path: Path, tokenizer_path, state: dict, run_dir: Path | None):
    """The tokenizer the model was trained with: --tokenizer, the folder itself, the run's final/, the data's tokenizer."""
    if tokenizer_path is not None:
        if missing_local_folder(str(tokenizer_path)):
            raise FileNotFoundError(f"--tokenizer {tokenizer_path}: no such folder")
        return gpt2_tokenizer(tokenizer_path)  # a folder or a Hub id
    candidates = [path, *([run_dir / "final"] if run_dir else [])]
    candidates += [folder / "tokenizer" for folder in _data_dirs(state, run_dir)]
    for candidate in candidates:
        if any((candidate / name).is_file() for name in TOKENIZER_FILES):
            return gpt2_tokenizer(candidate)
    raise ValueError(
        f"no tokenizer found for {path} (looked in {[str(c) for c in candidates]}); pass --tokenizer with the "
        "folder of the tokenizer the model was trained with, e.g. ../shared/data/gpt2-tokenizer for GPT-2's"
    )


def _check_tokenizer(tokenizer, config: GPTConfig, state: dict):
    if len(tokenizer) != config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}: "
            "pass --tokenizer with the tokenizer the model was trained with"
        )
    if tokenizer.eos_token_id is not None and config.eos_token_id is not None and tokenizer.eos_token_id != config.eos_token_id:
        raise ValueError(
            f"the tokenizer's end-of-text id {tokenizer.eos_token_id} ({tokenizer.eos_token!r}) differs from the "
            f"model's eos_token_id {config.eos_token_id}: pass --tokenizer with the tokenizer the model was trained with"
        )
    expected = state.get("tokenizer_hash")
    if expected:
        from token_shards import tokenizer_hash

        if tokenizer_hash(tokenizer) != expected:
            raise ValueError(
                f"the tokenizer's vocabulary hash {tokenizer_hash(tokenizer)[:12]}... differs from the one the model "
                f"was trained with ({expected[:12]}... in trainer_state.json): pass --tokenizer with that tokenizer"
            )


def load_source(checkpoint, tokenizer=None) -> Source:
    """Model, tokenizer and run facts from a Hugging Face folder or an accelerate checkpoint folder.

    tokenizer: a tokenizer folder or Hub id; by default the one saved next to the model or with the data.
    Raises ValueError for a folder without weights and for a tokenizer that does not fit the model.
    """
    path = Path(checkpoint)
    if not path.is_dir():
        raise ValueError(f"--checkpoint {str(path)!r} is not a folder: give a save_pretrained folder or a checkpoint step_XXXXXXX folder")
    run_dir = _find_run_dir(path.resolve())
    if (path / "config.json").is_file() and not (path / "trainer_state.json").is_file():
        refuse_pickle_weights(path, "--checkpoint")
        if not any((path / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
            found = sorted(p.name for p in path.iterdir())
            raise ValueError(f"no model weights in {path}: expected model.safetensors or model.safetensors.index.json; found {found}")
        model_type = _read_json(path / "config.json").get("model_type")
        if model_type != GPTConfig.model_type:
            raise ValueError(f"{path}/config.json has model_type {model_type!r}; gpt-push publishes this project's 'gpt' models")
        model = load_model(GPTForCausalLM.from_pretrained, str(path), "--checkpoint", dtype="auto")
        state = _final_record(path)
        max_step = state.get("step")
    elif (path / "trainer_state.json").is_file():
        state = read_run_record(path / "trainer_state.json")
        weights = _checkpoint_state_dict(path)
        config, origin = _checkpoint_config(path, state, run_dir)
        model = load_state_strictly(GPTForCausalLM(config), weights, f"--checkpoint {path} (config from {origin})")
        max_step = state.get("step")
    else:
        raise ValueError(
            f"{path} is neither a Hugging Face folder (config.json + model.safetensors) nor a training checkpoint "
            f"(trainer_state.json + {ACCELERATE_WEIGHTS[0]}); found {sorted(p.name for p in path.iterdir())}"
        )
    model.eval()
    tok = _load_tokenizer(path, tokenizer, state, run_dir)
    _check_tokenizer(tok, model.config, state)
    metrics = _read_metrics(run_dir, max_step) if state else []  # no record: which rows describe these weights is unknown
    return Source(model, tok, run_dir, state, metrics, _data_source(state, run_dir), path)


# ----------------------------------------------------------------------------- the model card


def _eval_files(run_dir: Path | None) -> list[Path]:
    """JSON files in the run folder (or its eval/ subfolder) that hold save_results' {"results": ...}."""
    if run_dir is None:
        return []
    found = []
    for path in sorted([*run_dir.glob("*.json"), *run_dir.glob("eval/*.json")]):
        if path.is_symlink() or path.parent.is_symlink():
            continue  # a link may point anywhere: only the run's own files fill the card
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("results"), dict):
            found.append(path)
    return found


def read_eval_entries(paths) -> list[dict]:
    """One record per (task, metric) from eval results JSON files written by eval.save_results.

    The records are rebuilt from the file's results and config (data_dir, limit), so that files written before
    the records knew their data source and completeness get them too.
    """
    from eval.results import result_entries

    entries = []
    for path in paths:
        data = _read_json(Path(path))
        if not isinstance(data.get("results"), dict):
            raise ValueError(f"{path} has no 'results' object: is it a file written by gpt-eval / eval.save_results?")
        config = data.get("config") or {}
        entries += result_entries(data["results"], data.get("model"), data.get("scoring", "harness"),
                                  config.get("data_dir"), config.get("limit"))
    return entries


def model_index_entries(entries) -> list[dict]:
    """The entries that may be published as a benchmark's score: complete runs on the official Hub data."""
    return [e for e in entries if e.get("dataset") and e.get("data_source") == "hub" and not e.get("partial")]


def _eval_results(entries) -> list[EvalResult]:
    return [
        EvalResult(
            task_type="text-generation", task_name="Text Generation",
            dataset_type=e["dataset"], dataset_name=e["dataset_title"], dataset_config=e.get("dataset_config"),
            dataset_split=e.get("dataset_split"), dataset_args={"num_few_shot": 0, "num_items": e.get("n")},
            metric_type=e["metric"], metric_value=round(float(e["value"]), 4),
            metric_name=f"{e['metric']} (0-shot, {e.get('scoring', 'harness')} scoring, {e.get('n')} items)",
            metric_config=e.get("scoring", "harness"),
        )
        for e in model_index_entries(entries)
    ]


def _human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _num_parameters(model: GPTForCausalLM) -> int:
    # the padded vocabulary rows exist only for speed; count the model as a user sees it
    cfg = model.config
    padding = (cfg.padded_vocab_size - cfg.vocab_size) * cfg.n_embd * (1 if cfg.tie_word_embeddings else 2)
    return model.num_parameters() - padding


def _architecture_rows(model: GPTForCausalLM, native: bool) -> list[tuple[str, str]]:
    c = model.config
    modern = c.norm == "rmsnorm"
    code = f"transformers' own `{native_class_name(c)}`" if native else \
        "custom code (`trust_remote_code=True`): `configuration_gpt.py`, `modeling_gpt.py`"
    return [
        ("Parameters", f"{_num_parameters(model):,}"),
        ("Layers / heads / width", f"{c.n_layer} / {c.n_head} / {c.n_embd}"),
        ("MLP", f"{c.mlp.upper()}, hidden size {c.n_inner}"),
        ("Normalization", "RMSNorm" if modern else "LayerNorm"),
        ("Positions", f"RoPE (theta {c.rope_theta:g})" if c.position_embedding == "rope" else "learned absolute"),
        ("Context length", f"{c.n_positions} tokens"),
        ("Vocabulary", f"{c.vocab_size:,} tokens"),
        ("Biases", "yes" if c.bias else "no"),
        ("Tied input/output embeddings", "yes" if c.tie_word_embeddings else "no"),
        ("Code", code),
    ]


def _first(d: dict, *keys):
    for key in keys:
        if d.get(key) is not None:
            return d[key]
    return None


def _train_seconds(source: Source, batch_tokens) -> float | None:
    """Wall time of the run: trainer_state.json's elapsed_seconds, else summed from metrics.jsonl's throughput."""
    seconds = _first(source.trainer_state, "elapsed_seconds")
    if seconds is not None or not batch_tokens:
        return seconds
    total, previous = 0.0, 0
    for row in source.metrics:  # tokens_per_sec covers the steps since the previous row that has one
        if row.get("tokens_per_sec"):
            total += (row["step"] - previous) * batch_tokens / row["tokens_per_sec"]
            previous = row["step"]
    return total or None


def _training_rows(source: Source) -> list[tuple[str, str]]:
    """What the run folder knows: tokens, steps, batch, learning rate, hardware, time, losses."""
    state = source.trainer_state
    args = {**state, **state.get("config", {})}  # the training arguments, wherever the trainer put them
    last = source.metrics[-1] if source.metrics else {}
    # metrics.jsonl (cut at the checkpoint's step) knows the last step; trainer_state.json is the fallback
    tokens = _first(last, "tokens") if last.get("tokens") is not None else _first(state, "tokens")
    step = _first(last, "step") if last.get("step") is not None else _first(state, "step")
    rows = []
    if tokens is not None:
        rows.append(("Tokens seen", f"{int(tokens):,} ({_human(tokens)})"))
    if step is not None:
        rows.append(("Optimizer steps", f"{int(step):,}"))
    batch, seq_len = _first(args, "total_batch_tokens"), _first(args, "seq_len")
    if batch is not None:
        rows.append(("Batch", f"{int(batch):,} tokens per step" + (f" in sequences of {seq_len}" if seq_len else "")))
    lr = _first(args, "learning_rate")
    if lr is not None:
        schedule = f"peak {lr:g}"
        if _first(args, "warmup_steps") is not None:
            schedule += f", linear warmup {args['warmup_steps']} steps"
        if _first(args, "min_lr_ratio") is not None:
            schedule += f", cosine decay to {lr * args['min_lr_ratio']:g}"
        rows.append(("Learning rate", schedule))
    for name, key in (("Weight decay", "weight_decay"), ("Mixed precision", "mixed_precision")):
        if _first(args, key) is not None:
            rows.append((name, str(args[key])))
    hardware = _first(state, "hardware")
    if isinstance(hardware, dict) and {"device", "processes"} <= hardware.keys():
        distributed = str(hardware.get("distributed", "NO")).removeprefix("DistributedType.")
        hardware = f"{hardware['processes']} x {hardware['device']}" + (f" ({distributed})" if distributed != "NO" else "")
    elif isinstance(hardware, dict):
        hardware = ", ".join(f"{k}: {v}" for k, v in hardware.items())
    if not hardware and _first(args, "world_size"):
        hardware = f"{args['world_size']} process(es)"
    rows.append(("Hardware", str(hardware) if hardware else "not recorded"))
    seconds = _train_seconds(source, batch)
    if seconds:
        rows.append(("Training time", f"{seconds / 3600:.2f} h"))
    if last.get("loss") is not None:
        rows.append(("Final training loss", f"{last['loss']:.4f}"))
    for key, name in (("val_loss", "Final validation loss"), ("hellaswag_acc_norm", "HellaSwag acc_norm during training")):
        seen = [r for r in source.metrics if r.get(key) is not None]
        if seen:
            rows.append((name, f"{seen[-1][key]:.4f} (step {seen[-1].get('step')})"))
    return rows


def usage_snippet(repo_id: str, native: bool, revision: str | None = None) -> str:
    """Python that loads the published model and generates: the card shows it, the tests run it."""
    # AutoTokenizer reads config.json too, and asks before running its auto_map code unless trusted
    extra = ("" if native else ", trust_remote_code=True") + (f", revision={revision!r}" if revision else "")
    return (
        "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline\n\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{extra})\n'
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}"{extra})\n'
        'generator = pipeline("text-generation", model=model, tokenizer=tokenizer)\n'
        'print(generator("The meaning of life is", max_new_tokens=40)[0]["generated_text"])\n'
    )


def _table(rows, header=("", "")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} |" for a, b in rows])


def hub_dataset(data_source: dict | None) -> str | None:
    """The Hub dataset id the model was trained on, when gpt-tokenize recorded one with its revision."""
    if data_source and data_source.get("dataset") and data_source.get("revision") and not data_source.get("data_files"):
        return data_source["dataset"]
    return None


def describe_data(data_source: dict | None) -> str:
    """The training data in words (markdown), exactly as far as gpt-tokenize recorded it."""
    if not data_source:
        return "data the run did not record"
    dataset, files = data_source.get("dataset"), data_source.get("data_files")
    if files:
        return "local files " + ", ".join(f"`{f}`" for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    details = [f"{key} `{data_source[key]}`" for key in ("name", "split") if data_source.get(key)]
    if hub_dataset(data_source):
        details.append(f"revision `{data_source['revision']}`")
        where = f"[{dataset}](https://huggingface.co/datasets/{dataset})"
    elif "revision" in data_source or dataset.startswith((".", "/", "~")):  # a local folder
        where = f"a local copy of a dataset, `{dataset}`"
    else:  # a manifest from before revisions were recorded
        where = f"`{dataset}`"
        details.append("revision not recorded")
    return where + (f" ({', '.join(details)})" if details else "")


def _provenance(source: Source) -> str:
    init_from = source.trainer_state.get("config", {}).get("init_from")
    start = f"fine-tuned from `{init_from}`" if init_from else "pretrained from scratch"
    return f"{start} on {describe_data(source.data_source)}"


def _evaluation_section(entries) -> list[str]:
    """The card's evaluation table: every number with its items, data and scoring; partial runs say so."""
    rows = []
    for e in entries:
        value = f"{e['value']:.4f}" + (f" ± {e['stderr']:.4f}" if e.get("stderr") is not None else "")
        data = "Hub" if e.get("data_source") == "hub" else f"local copy `{e.get('data_source')}`" if e.get("data_source") else "not recorded"
        n = f"{e['n']:,}" if isinstance(e.get("n"), int) else "?"
        rows.append((e["dataset_title"], e["metric"], value, n + (" (partial)" if e.get("partial") else ""), data, e.get("scoring", "harness")))
    lines = [
        "## Evaluation\n",
        "Zero-shot, measured with the project's `gpt-eval`: scoring `harness` follows lm-evaluation-harness, `nanogpt` "
        "follows build-nanogpt's HellaSwag. Only complete evaluations on the Hub datasets enter the model-index "
        "metadata; numbers on part of a benchmark (`--limit`, marked partial) or on a local copy are shown here only.\n",
        "| Task | Metric | Value | Items | Data | Scoring |\n|---|---|---|---|---|---|\n"
        + "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n",
    ]
    return lines


def build_card(source: Source, repo_id: str, *, native: bool, entries, samples, plots, license: str,
               generation: dict, revision: str | None = None) -> ModelCard:
    """The README.md: YAML metadata (license, dataset, pipeline, model-index) and the text a reader needs."""
    name = repo_id.split("/")[1]
    modern = source.model.config.norm == "rmsnorm"
    dataset = hub_dataset(source.data_source)
    data = ModelCardData(
        language="en", license=license, datasets=[dataset] if dataset else None, pipeline_tag="text-generation",
        library_name="transformers", model_name=name,
        tags=["gpt2" if not modern else "llama", *(["fineweb-edu"] if dataset and "fineweb-edu" in dataset.lower() else []),
              "pretrained", *([] if native else ["custom_code"])],
        eval_results=_eval_results(entries) or None,
    )
    tokens = _first(source.metrics[-1] if source.metrics else {}, "tokens") or _first(source.trainer_state, "tokens")
    kind = "a modern GPT (RMSNorm, SwiGLU, RoPE, no biases)" if modern else "a GPT-2"
    body = [
        f"# {name}\n",
        f"{name} is {kind} language model with {_human(_num_parameters(source.model))} parameters, {_provenance(source)}"
        + (f" ({_human(tokens)} tokens)" if tokens else "") + " with modeling-gpt. It is a base model: it continues "
        "text; it was not instruction-tuned or aligned.\n",
        "## Usage\n",
        "```python\n" + usage_snippet(repo_id, native, revision) + "```\n",
        f"Sampling defaults (generation_config.json): top-k {generation['top_k']}, temperature "
        f"{generation['temperature']}, `do_sample=True`; pass `do_sample=False` for greedy decoding. The tokenizer pads "
        "with the end-of-text token on the left, as batched generation needs.\n",
        "## Model\n",
        _table(_architecture_rows(source.model, native)) + "\n",
        "## Training\n",
        _table(_training_rows(source)) + "\n",
    ]
    if entries:
        body += _evaluation_section(entries)
    if plots:
        body += ["## Training curves\n", "\n".join(f"![{p.stem}]({p.as_posix()})" for p in plots) + "\n"]
    if samples:
        body += [
            "## Sample completions\n",
            f"Generated at export time with the sampling defaults above (seed {samples[0]['seed']}, "
            f"{samples[0]['max_new_tokens']} new tokens), not cherry-picked.\n",
            "\n".join(f"**{s['prompt']}**\n\n```text\n{s['text']}\n```\n" for s in samples),
        ]
    body += [
        "## Limitations\n",
        "A small pretrained language model: it states falsehoods fluently, reflects the biases of web text, and "
        "should not be relied on for facts or advice.\n",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


# ----------------------------------------------------------------------------- the folder


def native_model(model: GPTForCausalLM, atol: float = 1e-4):
    """transformers' own GPT2LMHeadModel / LlamaForCausalLM twin, after checking its logits match on a probe batch."""
    native = model.to_hf_native()
    check_native_parity(model, native, atol)
    return native


def check_native_parity(model: GPTForCausalLM, native, atol: float = 1e-4) -> float:
    """Largest |logit difference| between the two models on a fixed probe batch; ValueError above atol."""
    cfg = model.config
    if next(model.parameters()).dtype != torch.float32:  # compare the functions, not bf16/fp16 rounding
        model, native = copy.deepcopy(model).float(), copy.deepcopy(native).float()
    generator = torch.Generator().manual_seed(0)
    probe = torch.randint(0, cfg.vocab_size, (2, min(64, cfg.n_positions)), generator=generator)  # (B, T)
    with torch.no_grad():
        ours = model(probe).logits.float()
        theirs = native(probe).logits.float()
    if theirs.shape != ours.shape:
        raise ValueError(f"--native: the native model returns logits of shape {tuple(theirs.shape)}, ours {tuple(ours.shape)}")
    diff = (theirs - ours).abs().max().item()
    if not diff <= atol:
        raise ValueError(
            f"--native refused: {type(native).__name__}'s logits differ from the original by {diff:.3g} (> {atol:g}) "
            "on the probe batch; publish without --native (remote code) instead"
        )
    return diff


def generation_config(tokenizer, config: GPTConfig) -> GenerationConfig:
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else config.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return GenerationConfig(do_sample=True, top_k=50, temperature=1.0, max_new_tokens=128,
                            bos_token_id=config.bos_token_id, eos_token_id=eos, pad_token_id=pad)


def sample_completions(model, tokenizer, gen: GenerationConfig, prompts, max_new_tokens=48, seed=1337) -> list[dict]:
    """One seeded, sampled completion per prompt with the published generation config."""
    gen = copy.deepcopy(gen)
    gen.max_new_tokens = max_new_tokens
    samples = []
    with torch.random.fork_rng():  # the caller's random state is left as it was
        torch.manual_seed(seed)
        for prompt in prompts:
            enc = tokenizer(prompt, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**enc, generation_config=gen)
            samples.append({"prompt": prompt, "text": tokenizer.decode(out[0], skip_special_tokens=True),
                            "seed": seed, "max_new_tokens": max_new_tokens})
    return samples


def _plots(run_dir: Path | None) -> list[Path]:
    if run_dir is None:
        return []
    found = {*run_dir.glob("*.png"), *run_dir.glob("plots/*.png"), *run_dir.glob("eval/*.png")}
    # a link may point anywhere (a private file): only the run's own plots are copied into the upload
    return sorted(p for p in found if not p.is_symlink() and not p.parent.is_symlink())


EXPORT_MARKER = ".gpt-push-export.json"  # written last into every export, never uploaded: what --overwrite may replace


def _export_files(folder: Path) -> list[str]:
    """Every file or link under folder (relative, '/'-separated), the marker aside; links are listed, never followed."""
    found = []
    for root, dirs, files in os.walk(folder):
        for name in [*files, *(d for d in dirs if (Path(root) / d).is_symlink())]:
            found.append((Path(root) / name).relative_to(folder).as_posix())
    return sorted(f for f in found if f != EXPORT_MARKER)


def _check_replaceable(output_dir: Path, source: Source):
    """--overwrite replaces an earlier export only, recognised by the marker gpt-push wrote into it, and only when
    every file in it is one gpt-push wrote: never a folder holding the input, a run, a git clone or a user's files."""
    out = output_dir.resolve()
    inputs = [p.resolve() for p in (source.path, source.run_dir) if p is not None]
    if any(p == out or out in p.parents for p in inputs):
        raise ValueError(f"--output-dir {str(output_dir)!r} holds the checkpoint being published; --overwrite "
                         "would delete it: choose another --output-dir")
    marker = output_dir / EXPORT_MARKER
    try:
        written = json.loads(marker.read_text())["files"] if marker.is_file() and not marker.is_symlink() else None
    except (OSError, ValueError, KeyError, TypeError):
        written = None
    if not isinstance(written, list):
        raise ValueError(f"--output-dir {str(output_dir)!r} is not a gpt-push export (it has no {EXPORT_MARKER}); "
                         "--overwrite replaces only a folder gpt-push wrote: choose another --output-dir")
    others = [f for f in _export_files(output_dir) if f not in written]
    if others:
        raise ValueError(f"--output-dir {str(output_dir)!r} holds files gpt-push did not write ({', '.join(others[:5])}"
                         f"{', ...' if len(others) > 5 else ''}); --overwrite deletes only what gpt-push made: move them "
                         "away or choose another --output-dir")


def export(source: Source, output_dir, repo_id: str, *, native=False, eval_results=None, license="mit",
           max_shard_size="2GB", prompts=PROMPTS, seed=1337, revision=None, overwrite=False) -> Path:
    """Write the Hub-ready folder to output_dir (atomically: built beside it, then moved into place).

    eval_results: results JSON files (eval.save_results); None finds them in the run folder.
    """
    check_repo_id(repo_id)
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"--output-dir {str(output_dir)!r} exists and is not empty; pass --overwrite to replace it")
        _check_replaceable(output_dir, source)
    bad = nonfinite_weights(source.model.named_parameters())
    if bad:
        raise ValueError(f"refusing to export: {len(bad)} weight tensor(s) hold NaN or inf (e.g. {bad[0]}); "
                         "publish an earlier checkpoint of the run")
    model, tokenizer = source.model, publishable_tokenizer(source.tokenizer, source.model.config.n_positions)
    gen = generation_config(tokenizer, model.config)
    published = native_model(model) if native else model
    published.generation_config = gen
    entries = read_eval_entries(_eval_files(source.run_dir) if eval_results is None else eval_results)
    samples = sample_completions(model, tokenizer, gen, prompts, seed=seed) if prompts else []

    # a failed write (a full disk) leaves nothing: the folder is built beside output_dir and removed on failure
    with writing(output_dir, "run the same command again"), atomic_io.atomic_path(output_dir) as tmp:
        published.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
        plots = []
        for png in _plots(source.run_dir):
            (tmp / "plots").mkdir(exist_ok=True)
            shutil.copyfile(png, tmp / "plots" / png.name)
            plots.append(Path("plots") / png.name)
        card = build_card(source, repo_id, native=native, entries=entries, samples=samples, plots=plots,
                          license=license, generation=gen.to_dict(), revision=revision)
        card.save(tmp / "README.md")
        (tmp / EXPORT_MARKER).write_text(json.dumps({"format": "gpt-push-export", "repo_id": repo_id,
                                                     "files": _export_files(tmp)}, indent=1) + "\n")
    return output_dir


# ----------------------------------------------------------------------------- the Hub


def upload(folder, repo_id: str, *, private=False, revision=None, commit_message=None) -> str:
    """create_repo(exist_ok=True), the branch if asked, then upload_folder; returns the commit URL.

    The token is whatever huggingface_hub finds (HF_TOKEN or the `hf auth login` file)."""
    api = HfApi()
    api.create_repo(repo_id, private=private or None, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                             commit_message=commit_message or f"Upload {repo_id.split('/')[1]} with gpt-push",
                             ignore_patterns=[EXPORT_MARKER])  # the marker is for --overwrite here, not for the Hub
    return info.commit_url


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpt-push", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a save_pretrained folder (output_dir/final) or a checkpoint (output_dir/checkpoints/step_XXXXXXX)")
    p.add_argument("--repo-id", required=True, help="the Hub repository, namespace/name")
    p.add_argument("--native", action="store_true", help="publish as transformers' own gpt2/llama architecture (no remote code), after a logits check")
    p.add_argument("--private", action="store_true", help="create the repository private (ignored when it exists)")
    p.add_argument("--revision", default=None, help="branch to upload to (created from main if missing)")
    p.add_argument("--commit-message", default=None, help="the commit's message")
    p.add_argument("--dry-run", action="store_true", help="write the folder and stop before anything touches the Hub")
    p.add_argument("--output-dir", default=None, help="where the folder goes (default: a temporary folder, or RUN/hub/NAME with --dry-run)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or Hub id (default: the one saved with the model or the data)")
    p.add_argument("--eval-results", nargs="*", default=None, help="results JSON files from gpt-eval (default: *.json with 'results' in the run folder)")
    p.add_argument("--license", default="mit", help="the model card's license (default: mit)")
    p.add_argument("--max-shard-size", default="2GB", help="weights above this are split into shards (default: 2GB)")
    p.add_argument("--prompts", nargs="*", default=list(PROMPTS), help="prompts for the card's sample completions (none: no samples)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the sample completions")
    return p


def main(argv=None):
    return run_cli("gpt-push", _main, argv)


def _main(argv):
    from transformers.utils import logging as hf_logging

    args = _parser().parse_args(argv)
    hf_logging.disable_progress_bar()  # no "Loading weights" / "Writing model shards" bars around the file list
    check_repo_id(args.repo_id)
    if not args.dry_run:
        if get_token() is None:
            raise ValueError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run)")
        require_hub(f"uploading to {args.repo_id}", "use --dry-run --output-dir DIR to write the folder now, and "
                    "upload it later from a machine with network with `hf upload REPO_ID DIR`")
    source = load_source(args.checkpoint, args.tokenizer)
    name = args.repo_id.split("/")[1]
    with tempfile.TemporaryDirectory() as tmp:
        if args.output_dir:
            out = Path(args.output_dir)
        elif args.dry_run:
            out = (source.run_dir or Path(args.checkpoint).resolve().parent) / "hub" / name
        else:
            out = Path(tmp) / name
        folder = export(source, out, args.repo_id, native=args.native, eval_results=args.eval_results,
                        license=args.license, max_shard_size=args.max_shard_size, prompts=args.prompts,
                        seed=args.seed, revision=args.revision, overwrite=args.overwrite)
        files = [folder / f for f in _export_files(folder)]
        architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
        print(f"exported {folder} ({architecture}{'' if args.native else ', remote code'}):")
        for f in files:
            print(f"  {f.relative_to(folder).as_posix():40s} {f.stat().st_size:>12,d} bytes")
        target = f"{args.repo_id}" + (f" (branch {args.revision})" if args.revision else "") + (" private" if args.private else "")
        if args.dry_run:
            print(f"dry run: nothing uploaded; would upload to {target}")
            return
        try:
            url = upload(folder, args.repo_id, private=args.private, revision=args.revision,
                         commit_message=args.commit_message)
        except HfHubHTTPError as err:
            raise RunError(f"the Hub refused: {err}") from None
        print(f"uploaded to {target}: {url}")


if __name__ == "__main__":
    sys.exit(main())
