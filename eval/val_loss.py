"""Validation loss and perplexity over the token shards written by tokenize_fineweb.py."""

import math

import torch
import torch.nn.functional as F

import token_shards


CHUNK_BYTES = 2**28  # the float32 logits and log-softmax of one chunk of rows: at most ~256 MiB each


def chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, T, V) logits, in float32 a few rows at a time: at 64 x 1024 x 50257 a whole-batch
    float32 copy plus its log-softmax would take ~26 GB."""
    rows = max(1, CHUNK_BYTES // (logits.shape[1] * logits.shape[2] * 4))
    total = torch.zeros((), dtype=torch.float32, device=logits.device)
    for i in range(0, logits.shape[0], rows):
        chunk = logits[i:i + rows]
        total += F.cross_entropy(chunk.float().flatten(0, 1), targets[i:i + rows].flatten(), reduction="sum")
    return total / targets.numel()


@torch.no_grad()
def mean_loss(model, loader, num_batches: int, accelerator=None) -> float:
    """Mean next-token loss over the first `num_batches` batches of `loader` (a token_shards.ShardDataLoader
    built for this process's rank), read from its start.

    Under Accelerate rank r reads batches r, r + W, ... (the loader's global-batch rule), so the result
    equals a single-process run over the same batches.
    """
    rank, world_size = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    if not 1 <= num_batches <= loader.chunks_per_epoch:
        raise ValueError(f"num_batches={num_batches}; the split holds 1..{loader.chunks_per_epoch} batches "
                         f"of {loader.batch_size}x{loader.seq_len}")
    device = accelerator.device if accelerator else next(model.parameters()).device
    loader.reset()
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    # every rank runs the same number of forward passes; a pass past num_batches counts for nothing
    for k in range(math.ceil(num_batches / world_size)):
        x, y = loader.next_batch()
        logits = model(input_ids=x.to(device)).logits  # (B, T, V)
        loss = chunked_cross_entropy(logits, y.to(device))
        if k * world_size + rank < num_batches:
            total += loss.double()
    model.train(was_training)
    if accelerator is not None and world_size > 1:
        total = accelerator.reduce(total, reduction="sum")
    return total.item() / num_batches


def val_loss(model, data_dir, batch_size: int, seq_len: int, num_batches: int | None = None, accelerator=None,
             tokenizer=None) -> dict:
    """Mean next-token loss over the first `num_batches` (B, T) batches of the "val" split (all when None).

    tokenizer: the model's; the shards must have been written with the same vocabulary (else a ShardError).
    Returns {"val_loss", "val_ppl", "tokens"}; equal under Accelerate to a single-process run.
    """
    rank, world_size = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    loader = token_shards.ShardDataLoader(
        data_dir, split="val", batch_size=batch_size, seq_len=seq_len, rank=rank, world_size=world_size, shuffle=False,
        tokenizer_hash=None if tokenizer is None else token_shards.tokenizer_hash(tokenizer),
    )
    if num_batches is None:
        num_batches = loader.chunks_per_epoch
    mean = mean_loss(model, loader, num_batches, accelerator)
    return {"val_loss": mean, "val_ppl": math.exp(mean), "tokens": num_batches * batch_size * seq_len}
