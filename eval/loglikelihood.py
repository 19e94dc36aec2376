"""Log-likelihood of continuations given contexts, batched, on any causal LM, split across ranks.

Follows lm-evaluation-harness's `HFLM` conventions so the numbers compare with it:
- a (context, continuation) pair is tokenized as the whole string, split at the context's token count,
  with trailing context whitespace moved onto the continuation (`encode_pair`), keeping the tokenizer's
  default special tokens (a Llama tokenizer's BOS starts every context; GPT-2's adds nothing);
- an empty context becomes the prefix token: the tokenizer's BOS where it has one, else end-of-text;
- context + continuation is truncated from the left to `max_length + 1` tokens, and the last token
  dropped, so the model sees at most `max_length` tokens;
- batches are right-padded: in a causal model padding after a sequence cannot change its logits.
"""

import inspect
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


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


def prefix_token_id(tokenizer) -> int:
    """The token an empty context becomes (and rolling windows start after): BOS when set, else end-of-text."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _move_spaces(context: str, continuation: str) -> tuple[str, str]:
    n_spaces = len(context) - len(context.rstrip())
    return (context[:-n_spaces], context[-n_spaces:] + continuation) if n_spaces else (context, continuation)


def encode_pair(tokenizer, context: str, continuation: str) -> Request:
    """lm-eval's tokenization: encode context+continuation whole, split it at len(encode(context))."""
    return encode_pairs(tokenizer, [(context, continuation)])[0]


def encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[Request]:
    """`encode_pair` for many pairs with two batched tokenizer calls (the Rust tokenizer runs them in parallel)."""
    moved = [_move_spaces(c, x) for c, x in pairs]
    empty = [i for i, (c, _) in enumerate(moved) if c == ""]
    full = [i for i, (c, _) in enumerate(moved) if c != ""]
    requests = [None] * len(pairs)
    if full:
        wholes = tokenizer([moved[i][0] + moved[i][1] for i in full])["input_ids"]
        contexts = tokenizer([moved[i][0] for i in full])["input_ids"]
        for i, c, w in zip(full, contexts, wholes):
            requests[i] = Request(c, w[len(c) :])
    if empty:
        # the prefix token is the whole context; the continuation gets no special tokens of its own
        continuations = tokenizer([moved[i][1] for i in empty], add_special_tokens=False)["input_ids"]
        for i, x in zip(empty, continuations):
            requests[i] = Request([prefix_token_id(tokenizer)], x)
    return requests


def max_length_of(model, tokenizer) -> int:
    """The longest input the model takes: its config's position count (or its text model's, for a config that
    nests one under text_config), as lm-eval reads it; else the tokenizer's model_max_length; else 2048."""
    configs = [model.config]
    if hasattr(model.config, "get_text_config"):
        configs.append(model.config.get_text_config())
    for config in configs:
        for name in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(config, name, None)
            if value:
                return int(value)
    if tokenizer.model_max_length < 1e12:  # transformers' "no limit" sentinel is ~1e30
        return int(tokenizer.model_max_length)
    return 2048


def rolling_windows(tokens: list[int], prefix_id: int, max_length: int, stride: int) -> list[Request]:
    """Requests that score every token of `tokens` exactly once, each window at most `max_length` long.

    The first token is scored after `prefix_id` (`prefix_token_id`: BOS, else end-of-text). The first window scores `max_length`
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
    model, requests: list[Request], max_length: int, batch_size: int = 8, device=None, accelerator=None,
    upcast: bool = True, desc: str | None = None,
) -> list[Score]:
    """Score every request; under Accelerate each rank scores its share and all ranks get all scores.

    upcast: log-softmax in float32 (True) or in the model's dtype, as lm-eval does (False); the two differ
    only for bfloat16 / float16 models. desc: names the progress bar (main process only; None: no bar).
    """
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
    # the main process's share stands for all ranks: they move at the same pace
    with tqdm(total=len(mine), desc=desc, unit="seq", disable=desc is None or rank != 0, mininterval=1.0,
              dynamic_ncols=True, leave=True) as progress:
        for batch in batches:
            if batch is None:  # padding pass so ranks stay in step; its output is discarded
                model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))
                continue
            local.extend(zip(batch, _score_batch(model, [requests[i] for i in batch], max_length, device, upcast)))
            progress.update(len(batch))

    if world_size > 1:
        from accelerate.utils import gather_object

        local = gather_object(local)
    return merge(local, len(requests))


def _takes_logits_to_keep(model) -> bool:
    """Whether the model's forward accepts `logits_to_keep` (transformers' causal LMs do; DDP wrappers hide it)."""
    module = getattr(model, "module", model)
    return "logits_to_keep" in inspect.signature(module.forward).parameters


def _token_logprobs(logits, rows, cols, target, upcast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) at (rows, cols) of the (B, T, V) logits, and whether each target is the argmax; on the CPU.

    When most positions are scored (WikiText's windows) the block is normalised where it lies: one reduction,
    no (N, V) copy. When few are (multiple choice: the continuation's last tokens) only those rows are picked.
    """
    if 2 * rows.numel() < logits.shape[0] * logits.shape[1]:
        logits, rows, cols = logits[rows, cols][None], torch.zeros_like(rows), torch.arange(rows.numel(), device=rows.device)
    if upcast:
        token_ll = logits[rows, cols, target].float() - torch.logsumexp(logits.float(), dim=-1)[rows, cols]
    else:  # lm-eval's: log_softmax in the model's dtype
        token_ll = torch.log_softmax(logits, dim=-1)[rows, cols, target].float()
    greedy = logits.argmax(-1)[rows, cols] == target
    return token_ll.cpu(), greedy.cpu()


def _score_batch(model, batch: list[Request], max_length: int, device, upcast: bool = True) -> list[Score]:
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

    # the positions that predict continuation tokens, and those tokens: (N,) each
    rows = torch.cat([torch.full((len(t),), b) for b, t in enumerate(targets)]).to(logits.device)
    cols = (torch.cat([torch.arange(len(i) - len(t), len(i)) for i, t in zip(inputs, targets)]) - offset).to(logits.device)
    target = torch.tensor([tok for t in targets for tok in t], device=logits.device)
    token_ll, greedy = _token_logprobs(logits, rows, cols, target, upcast)

    scores, start = [], 0
    for t in targets:
        stop = start + len(t)
        scores.append(Score(token_ll[start:stop].sum().item(), len(t), bool(greedy[start:stop].all())))
        start = stop
    return scores
