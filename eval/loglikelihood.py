"""Log-likelihood of continuations given contexts, batched, on any causal LM, split across ranks.

Follows lm-evaluation-harness's `HFLM` conventions so the numbers compare with it:
- a (context, continuation) pair is tokenized as the whole string, split at the context's token count,
  with trailing context whitespace moved onto the continuation (`encode_pair`);
- an empty context becomes the end-of-text token;
- context + continuation is truncated from the left to `max_length + 1` tokens, and the last token
  dropped, so the model sees at most `max_length` tokens;
- batches are right-padded: in a causal model padding after a sequence cannot change its logits.
"""

import inspect
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Request:
    """Token ids of one context and the continuation to score after it."""

    context: list[int]
    continuation: list[int]


@dataclass(frozen=True)
class Score:
    """Sum of the continuation's token log-probabilities, its token count, and whether greedy decoding
    would have produced exactly the continuation."""

    loglikelihood: float
    num_tokens: int
    is_greedy: bool


def encode_pair(tokenizer, context: str, continuation: str) -> Request:
    """lm-eval's tokenization: encode context+continuation whole, split it at len(encode(context))."""
    if context == "":
        return Request([tokenizer.eos_token_id], tokenizer.encode(continuation, add_special_tokens=False))
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    context_ids = tokenizer.encode(context, add_special_tokens=False)
    return Request(context_ids, whole[len(context_ids) :])


def encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[Request]:
    """`encode_pair` for many pairs with two batched tokenizer calls (the Rust tokenizer runs them in parallel)."""
    if any(context == "" for context, _ in pairs):
        return [encode_pair(tokenizer, c, x) for c, x in pairs]
    moved = []
    for context, continuation in pairs:
        n_spaces = len(context) - len(context.rstrip())
        moved.append((context[:-n_spaces], context[-n_spaces:] + continuation) if n_spaces else (context, continuation))
    wholes = tokenizer([c + x for c, x in moved], add_special_tokens=False)["input_ids"]
    contexts = tokenizer([c for c, _ in moved], add_special_tokens=False)["input_ids"]
    return [Request(c, w[len(c) :]) for c, w in zip(contexts, wholes)]


def max_length_of(model, tokenizer) -> int:
    """The longest input the model takes: its config's position count, as lm-eval reads it."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, name, None)
        if value:
            return int(value)
    if tokenizer.model_max_length < 1e12:  # transformers' "no limit" sentinel is ~1e30
        return int(tokenizer.model_max_length)
    return 2048


def rolling_windows(tokens: list[int], prefix_id: int, max_length: int, stride: int) -> list[Request]:
    """Requests that score every token of `tokens` exactly once, each window at most `max_length` long.

    The first token is scored after `prefix_id` (end-of-text). The first window scores `max_length`
    tokens; each later one scores the next `stride` tokens with the tokens before them as context.
    stride == max_length gives lm-eval's disjoint windows (`loglikelihood_rolling`); a smaller stride
    gives every scored token more context (the sliding window of transformers' perplexity guide).
    """
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be in [1, max_length={max_length}], got {stride}")
    seq = [prefix_id] + list(tokens)  # seq[i] is predicted from seq[:i]
    requests, begin, end = [], 1, min(len(tokens), max_length) + 1
    while begin < end:
        requests.append(Request(seq[max(0, end - max_length - 1) : begin], seq[begin:end]))
        begin, end = end, min(end + stride, len(seq))
    return requests


def _ranks(accelerator) -> tuple[int, int]:
    if accelerator is None:
        return 0, 1
    return accelerator.process_index, accelerator.num_processes


def shard(n: int, rank: int, world_size: int) -> list[int]:
    """Indices of the n items this rank handles: every world_size-th, so lengths stay balanced."""
    return list(range(rank, n, world_size))


def merge(gathered: list[tuple[int, object]], n: int) -> list:
    """Put (index, value) pairs gathered from all ranks back in item order; every index exactly once."""
    out = [None] * n
    seen = 0
    for index, value in gathered:
        out[index] = value
        seen += 1
    if seen != n or any(v is None for v in out):
        raise RuntimeError(f"gathered {seen} results for {n} items: ranks disagree on the items")
    return out


@torch.no_grad()
def score_requests(
    model, requests: list[Request], max_length: int, batch_size: int = 8, device=None, accelerator=None
) -> list[Score]:
    """Score every request; under Accelerate each rank scores its share and all ranks get all scores."""
    rank, world_size = _ranks(accelerator)
    mine = shard(len(requests), rank, world_size)
    # longest first (as lm-eval): the first batch shows the peak memory, and padding stays small
    mine.sort(key=lambda i: -len(requests[i].context) - len(requests[i].continuation))
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    if world_size > 1:
        # every rank must run the same number of forward passes (FSDP and DDP run collectives in forward)
        from accelerate.utils import gather_object

        most = max(gather_object([len(batches)]))
        batches += [None] * (most - len(batches))

    local = []
    for batch in batches:
        if batch is None:  # padding pass so ranks stay in step; its output is discarded
            model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))
            continue
        local.extend(zip(batch, _score_batch(model, [requests[i] for i in batch], max_length, device)))

    if world_size > 1:
        from accelerate.utils import gather_object

        local = gather_object(local)
    return merge(local, len(requests))


def _takes_logits_to_keep(model) -> bool:
    """Whether the model's forward accepts `logits_to_keep` (transformers' causal LMs do; DDP wrappers hide it)."""
    module = getattr(model, "module", model)
    return "logits_to_keep" in inspect.signature(module.forward).parameters


def _score_batch(model, batch: list[Request], max_length: int, device) -> list[Score]:
    inputs, targets = [], []
    for request in batch:
        if not request.context:
            raise ValueError("a request needs at least one context token (use end-of-text for an empty context)")
        if not 0 < len(request.continuation) <= max_length:
            raise ValueError(f"continuation of {len(request.continuation)} tokens; it must be 1..{max_length}")
        inputs.append((request.context + request.continuation)[-(max_length + 1) :][:-1])
        targets.append(request.continuation)
    width = max(map(len, inputs))
    input_ids = torch.zeros(len(batch), width, dtype=torch.long)  # right padding; pad id is irrelevant
    for b, ids in enumerate(inputs):
        input_ids[b, : len(ids)] = torch.tensor(ids)
    # the LM head only needs the positions from the earliest continuation on (the rest is context)
    keep = width - min(len(i) - len(t) for i, t in zip(inputs, targets))
    kwargs = {"logits_to_keep": keep} if _takes_logits_to_keep(model) else {}
    logits = model(input_ids=input_ids.to(device), **kwargs).logits  # (B, keep or T, V)
    offset = width - logits.shape[1]

    # only the positions that predict continuation tokens go through log_softmax: (N, V), not (B, T, V)
    rows = torch.cat([torch.full((len(t),), b) for b, t in enumerate(targets)])
    cols = torch.cat([torch.arange(len(i) - len(t), len(i)) for i, t in zip(inputs, targets)]) - offset
    target = torch.tensor([tok for t in targets for tok in t], device=logits.device)
    logprobs = logits[rows.to(logits.device), cols.to(logits.device)].float().log_softmax(-1)  # (N, V)
    token_ll = logprobs.gather(-1, target[:, None])[:, 0].cpu()
    greedy = (logprobs.argmax(-1) == target).cpu()

    scores, start = [], 0
    for t in targets:
        stop = start + len(t)
        scores.append(Score(token_ll[start:stop].sum().item(), len(t), bool(greedy[start:stop].all())))
        start = stop
    return scores
