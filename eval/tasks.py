"""The benchmarks: how each task turns documents into scoring requests and scores into metrics.

Zero-shot, with lm-evaluation-harness's prompts and metrics (task names are lm-eval's):
  hellaswag       acc, acc_norm (scoring "harness"; "nanogpt" = build-nanogpt's hellaswag.py)
  lambada_openai  acc (greedy last word), perplexity of the last word
  wikitext        word_perplexity, byte_perplexity, bits_per_byte (lm-eval) and token_perplexity
Standard errors as lm-eval computes them: analytic for accuracies (sample std / sqrt(n)), bootstrap for LAMBADA's
perplexity; WikiText's corpus ratios (no stderr in lm-eval) get a bootstrap over documents.
  piqa, arc_easy, arc_challenge   acc, acc_norm
  winogrande      acc (partial scoring: the shared continuation after each option)
"""

import math
import re

import numpy as np
import torch

from .data import hellaswag_preprocess, load_task_docs, wikitext_detokenize
from .loglikelihood import Request, encode_pairs, max_length_of, prefix_token_id, rolling_windows, score_requests

TASKS = ("hellaswag", "lambada_openai", "wikitext", "piqa", "arc_easy", "arc_challenge", "winogrande")
ALIASES = {"lambada": "lambada_openai"}
SCORINGS = ("harness", "nanogpt")


def resolve_tasks(tasks) -> list[str]:
    """'hellaswag,lambada' or a list -> canonical task names, in order, without repeats."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    out = []
    for name in (n.strip() for n in names):
        task = ALIASES.get(name, name)
        if task not in TASKS:
            raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS + tuple(ALIASES))}")
        if task not in out:
            out.append(task)
    if not out:
        raise ValueError("no task given; known: " + ", ".join(TASKS))
    return out


def mean_stderr(values) -> tuple[float, float | None]:
    """Mean and its standard error (sample standard deviation / sqrt(n)), as lm-eval reports for accuracies."""
    values = np.asarray(values, dtype=np.float64)
    stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return float(values.mean()), stderr


def _accuracies(**correct) -> dict:
    out = {}
    for name, values in correct.items():
        out[name], out[f"{name}_stderr"] = mean_stderr(values)
    return out


def _multiple_choice(groups, scores, norm: str) -> dict:
    """groups: (number of choices, normalizer per choice or None, gold) per document, in request order.

    acc: argmax of summed log-likelihood. acc_norm: argmax of log-likelihood / normalizer, the
    normalizer being the choice's length in characters (harness) or, when None, its token count
    (nanogpt: the lowest mean per-token loss).
    """
    correct, correct_norm, start = [], [], 0
    for n_choices, norms, gold in groups:
        chunk = scores[start : start + n_choices]
        start += n_choices
        lls = np.array([s.loglikelihood for s in chunk])
        lengths = np.array(norms if norms is not None else [s.num_tokens for s in chunk], dtype=np.float64)
        correct.append(float(np.argmax(lls) == gold))
        correct_norm.append(float(np.argmax(lls / lengths) == gold))
    metrics = _accuracies(acc=correct, acc_norm=correct_norm) if norm else _accuracies(acc=correct)
    return dict(metrics, n=len(groups))


def hellaswag_requests(docs, tokenizer, scoring: str):
    """Requests (4 per document) and the groups `_multiple_choice` needs, for either scoring."""
    if scoring == "harness":
        pairs, groups = [], []
        for d in docs:
            query = hellaswag_preprocess(d["activity_label"] + ": " + d["ctx_a"] + " " + d["ctx_b"].capitalize())
            choices = [hellaswag_preprocess(e) for e in d["endings"]]
            pairs += [(query, " " + c) for c in choices]
            # lm-eval divides by the length of the choice text, without the space it is joined with
            groups.append((len(choices), [len(c) for c in choices], int(d["label"])))
        return encode_pairs(tokenizer, pairs), groups
    if scoring == "nanogpt":
        # build-nanogpt: raw ctx and " " + ending, tokenized separately
        contexts = [c or [prefix_token_id(tokenizer)] for c in tokenizer([d["ctx"] for d in docs], add_special_tokens=False)["input_ids"]]
        endings = tokenizer([" " + e for d in docs for e in d["endings"]], add_special_tokens=False)["input_ids"]
        requests, groups, k = [], [], 0
        for d, context in zip(docs, contexts):
            for _ in d["endings"]:
                requests.append(Request(context, endings[k]))
                k += 1
            groups.append((len(d["endings"]), None, int(d["label"])))
        return requests, groups
    raise ValueError(f"unknown scoring {scoring!r}; accepted: {', '.join(SCORINGS)}")


BOOTSTRAP_ITERS = 100_000  # lm-eval's default number of resamples


def bootstrap_stderr(statistic, columns, iters: int = BOOTSTRAP_ITERS, seed: int = 1234) -> float | None:
    """Standard deviation of `statistic` over resamples (with replacement) of the documents, as lm-eval
    estimates the stderr of metrics that are not means (perplexity).

    columns: per-document arrays (n,) each; statistic takes their resampled sums or means along the last axis
    as it needs (it receives the (iters_chunk, n) arrays). Resampled in chunks of 1,000 to bound memory."""
    columns = [np.asarray(c, dtype=np.float64) for c in columns]
    n = len(columns[0])
    if n < 2:
        return None
    rng, values = np.random.default_rng(seed), []
    for start in range(0, iters, 1000):
        index = rng.integers(0, n, size=(min(1000, iters - start), n))
        values.append(statistic(*(c[index] for c in columns)))
    return float(np.concatenate(values).std(ddof=1))


def _wikitext_metrics(docs, doc_ll, doc_tokens) -> dict:
    # lm-eval counts words and bytes on the page before detokenization
    words = np.array([len(re.split(r"\s+", d["page"])) for d in docs], dtype=np.float64)
    n_bytes = np.array([len(d["page"].encode("utf-8")) for d in docs], dtype=np.float64)
    ll, tokens = np.asarray(doc_ll, dtype=np.float64), np.asarray(doc_tokens, dtype=np.float64)
    # lm-eval has no stderr for these corpus-level ratios; ours resamples documents (a ratio estimator)
    per = {"word_perplexity": (words, lambda l, w: np.exp(-l.sum(-1) / w.sum(-1))),
           "byte_perplexity": (n_bytes, lambda l, b: np.exp(-l.sum(-1) / b.sum(-1))),
           "bits_per_byte": (n_bytes, lambda l, b: -l.sum(-1) / b.sum(-1) / math.log(2)),
           "token_perplexity": (tokens, lambda l, t: np.exp(-l.sum(-1) / t.sum(-1)))}
    metrics = {}
    for name, (unit, statistic) in per.items():
        metrics[name] = float(statistic(ll, unit))
        metrics[f"{name}_stderr"] = bootstrap_stderr(statistic, [ll, unit], iters=10_000)
    return dict(metrics, n=len(docs))


def evaluate_task(task, docs, model, tokenizer, scoring, batch_size, max_length, stride, device, accelerator,
                  upcast: bool = True, progress: bool = False) -> dict:
    """Metrics of one task on the given documents (progress: a bar on the main process)."""
    def score(requests):
        return score_requests(model, requests, max_length, batch_size, device, accelerator, upcast=upcast,
                              desc=task if progress else None)

    if task == "hellaswag":
        requests, groups = hellaswag_requests(docs, tokenizer, scoring)
        return _multiple_choice(groups, score(requests), norm=True)
    if task in ("piqa", "arc_easy", "arc_challenge"):
        requests = encode_pairs(tokenizer, [(d["query"], " " + c) for d in docs for c in d["choices"]])
        groups = [(len(d["choices"]), [len(c) for c in d["choices"]], d["gold"]) for d in docs]
        return _multiple_choice(groups, score(requests), norm=True)
    if task == "winogrande":
        requests = encode_pairs(tokenizer, [(o, " " + d["continuation"]) for d in docs for o in d["context_options"]])
        groups = [(len(d["context_options"]), None, d["gold"]) for d in docs]
        return _multiple_choice(groups, score(requests), norm=False)
    if task == "lambada_openai":
        scores = score(encode_pairs(tokenizer, [(d["context"], " " + d["continuation"]) for d in docs]))
        metrics = _accuracies(acc=[float(s.is_greedy) for s in scores])
        # lm-eval's perplexity: exp of minus the mean per-document log-likelihood of the last word
        lls = [s.loglikelihood for s in scores]
        metrics["perplexity"] = math.exp(-float(np.mean(lls)))
        metrics["perplexity_stderr"] = bootstrap_stderr(lambda l: np.exp(-l.mean(-1)), [lls])  # as lm-eval: bootstrap
        return dict(metrics, n=len(docs))
    if task == "wikitext":
        texts = [wikitext_detokenize(d["page"]) for d in docs]
        token_lists = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        stride = stride or max_length
        windows = [rolling_windows(t, prefix_token_id(tokenizer), max_length, stride) for t in token_lists]
        scores = score([w for doc in windows for w in doc])
        doc_ll, start = [], 0
        for doc in windows:
            doc_ll.append(sum(s.loglikelihood for s in scores[start : start + len(doc)]))
            start += len(doc)
        return _wikitext_metrics(docs, doc_ll, [len(t) for t in token_lists])
    raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")


def run_tasks(
    model,
    tokenizer,
    tasks,
    data_dir=None,
    scoring: str = "harness",
    limit: int | None = None,
    batch_size: int = 8,
    accelerator=None,
    device=None,
    max_length: int | None = None,
    stride: int | None = None,
    upcast: bool = True,
    progress: bool = False,
) -> dict:
    """Evaluate a causal LM on benchmarks; returns {task: {metric: value, metric_stderr: .., "n": ..}}.

    tasks: names or a comma-separated string (see TASKS). data_dir: a folder laid out like
    ../shared/data; None reads the Hub datasets. scoring: HellaSwag's scoring, "harness" or "nanogpt".
    limit: the first N documents of each task. batch_size: sequences per forward pass. Under
    Accelerate the sequences are split across ranks and every rank returns the full results.
    max_length: longest model input (default: the model config's). stride: tokens scored per
    WikiText window after the first (default max_length, lm-eval's disjoint windows). upcast: log-softmax in
    float32 (True) or in the model's dtype like lm-eval (False). progress: a bar per task (main process only).
    """
    tasks = resolve_tasks(tasks)
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; accepted: {', '.join(SCORINGS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of documents or None, got {limit}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if accelerator is not None:
        device = accelerator.device
    elif device is not None:
        device = torch.device(device)
        model.to(device)
    else:
        device = next(model.parameters()).device
    if max_length is not None and not 1 <= max_length <= max_length_of(model, tokenizer):
        raise ValueError(f"max_length={max_length}: the model takes 1..{max_length_of(model, tokenizer)} tokens")
    max_length = max_length or max_length_of(model, tokenizer)

    was_training = model.training
    model.eval()
    try:
        results = {}
        for task in tasks:
            docs = load_task_docs(task, data_dir, limit)
            results[task] = evaluate_task(
                task, docs, model, tokenizer, scoring, batch_size, max_length, stride, device, accelerator, upcast, progress
            )
    finally:
        model.train(was_training)
    return results
