"""Results: the terminal table and the JSON file push_to_hub.py turns into a model card's model-index."""

from pathlib import Path

import atomic_io

from .data import HUB_DATASETS, LOCAL_FILES

# what the numbers are called on the Hub (dataset pretty names) for a model card
TASK_TITLES = {
    "hellaswag": "HellaSwag",
    "lambada_openai": "LAMBADA (OpenAI)",
    "wikitext": "WikiText-2",
    "piqa": "PIQA",
    "arc_easy": "ARC-Easy",
    "arc_challenge": "ARC-Challenge",
    "winogrande": "Winogrande",
}


def metric_names(task_results: dict) -> list[str]:
    """The metrics of one task's results (its keys less the `_stderr` companions and `n`)."""
    return [k for k in task_results if k != "n" and not k.endswith("_stderr")]


def is_partial(n, limit) -> bool:
    """Whether a task scored with `--limit limit` saw only part of its data (n items were scored)."""
    return limit is not None and n is not None and n >= limit


def result_entries(results: dict, model_name=None, scoring: str = "harness", data_dir=None, limit=None) -> list[dict]:
    """One flat record per (task, metric): the value and what it was computed on.

    value, stderr, n (items scored), model, scoring (harness = lm-evaluation-harness, nanogpt = build-nanogpt),
    the official dataset (id, config, split), data_source (the Hub, or the local file read with --data-dir) and
    partial (True when --limit cut the data short: such a number is not the benchmark's score).
    """
    entries = []
    for task, metrics in results.items():
        path, config, split = HUB_DATASETS.get(task, (None, None, None))  # "val": the caller's token shards
        local = str(Path(data_dir) / LOCAL_FILES[task]) if data_dir is not None and task in LOCAL_FILES else None
        for metric in metric_names(metrics):
            entries.append({
                "task": task, "metric": metric, "value": metrics[metric],
                "stderr": metrics.get(f"{metric}_stderr"), "n": metrics.get("n"), "model": model_name,
                # only HellaSwag has two scorings; every other task is always scored as lm-eval does
                "scoring": scoring if task == "hellaswag" else "harness",
                "dataset": path, "dataset_config": config, "dataset_split": split,
                "dataset_title": TASK_TITLES.get(task, task),
                "data_source": local or ("hub" if path else None),
                "partial": is_partial(metrics.get("n"), limit),
            })
    return entries


def save_results(results: dict, path, model_name=None, scoring: str = "harness", config: dict | None = None) -> Path:
    """Write the results JSON atomically and return its path.

    Layout: {"results": {task: {metric: value, ...}}, "entries": [flat records], "model", "scoring",
    "config", plus evaluate.save's provenance (_timestamp, _git_commit_hash, library versions)}; so
    `json.load(f)["results"]["hellaswag"]["acc_norm"]` is the HellaSwag acc_norm.
    """
    import evaluate  # here, not at the top: evaluate pulls in datasets, which a GPU box may not have

    path = Path(path)
    with atomic_io.atomic_path(path) as tmp:
        evaluate.save(
            tmp, results=results,
            entries=result_entries(results, model_name, scoring, (config or {}).get("data_dir"), (config or {}).get("limit")),
            model=model_name, scoring=scoring, config=config or {},
        )
    return path


def format_table(results: dict) -> str:
    """A plain-text table: task, metric, value, stderr, n."""
    rows = [("task", "metric", "value", "stderr", "n")]
    for task, metrics in results.items():
        for metric in metric_names(metrics):
            stderr = metrics.get(f"{metric}_stderr")
            rows.append((task, metric, f"{metrics[metric]:.4f}", "" if stderr is None else f"± {stderr:.4f}", str(metrics.get("n", ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
