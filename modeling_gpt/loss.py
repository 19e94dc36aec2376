"""The causal-LM loss straight from the last hidden states: lm_head and cross-entropy fused, no (B, T, V) logits.

Liger Kernel's Triton kernel on CUDA when it is installed (`pip install -e ".[gpu]"`), else a chunked PyTorch
version. Shipped to the Hub as remote code next to modeling_gpt.py: imports nothing but torch (Liger only inside a
try, which transformers' check of remote-code imports skips).
"""

import torch
import torch.nn.functional as F

MIN_CHUNK = 1024  # tokens


# looked up once, at import: an import inside the forward would stop torch.compile's graph where Liger is missing
try:
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
except ImportError:
    liger_fused_linear_cross_entropy = None


def chunk_loss(hidden, weight, targets, vocab_size, ignore_index):
    """(summed loss, d loss / d logits) of one chunk of tokens; the padded vocabulary columns get no probability."""
    logits = (hidden @ weight.t()).float()  # (n, padded V), in fp32 like transformers' loss
    logits[:, vocab_size:] = float("-inf")
    valid = targets != ignore_index
    picked = torch.where(valid, targets, 0)
    lse = torch.logsumexp(logits, dim=-1)
    loss = ((lse - logits.gather(1, picked[:, None]).squeeze(1)) * valid).sum()
    grad = logits.sub_(lse[:, None]).exp_()  # the softmax, in the logits' memory
    grad.scatter_add_(1, picked[:, None], -torch.ones_like(grad[:, :1]))
    return loss, grad.mul_(valid[:, None])


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T`, a chunk of tokens at a time; the gradients are computed in the
    forward (as Liger's kernel does), so no chunk's logits outlive it and backward only scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_size, ignore_index, need_grad, chunk):
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        grad_hidden = torch.zeros_like(hidden) if need_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_grad else None
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start : start + chunk], targets[start : start + chunk]
            loss, grad = chunk_loss(h, weight, t, vocab_size, ignore_index)
            total = total + loss
            if need_grad:
                grad = grad.to(weight.dtype)
                grad_hidden[start : start + chunk] = grad @ weight
                grad_weight += grad.t() @ h
        if need_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_total, grad_weight * grad_total, None, None, None, None, None


def chunk_tokens(n_tokens, n_embd, n_rows):
    """Tokens per chunk: about as many logits as the hidden states hold (the extra memory of one activation), but
    never under MIN_CHUNK, below which each chunk's weight-gradient update rereads the whole head for few tokens."""
    return max(MIN_CHUNK, -(-n_tokens // -(-n_rows // n_embd)))


def fused_linear_cross_entropy(hidden, weight, labels, vocab_size, num_items_in_batch=None, ignore_index=-100,
                               shift_labels=None, chunk=None, **kwargs):
    """transformers' ForCausalLMLoss of `hidden @ weight.T` over the first `vocab_size` columns, without the logits.

    `hidden` is (B, T, C), `weight` the (padded V, C) head; the padded rows never enter the softmax. Labels are
    shifted as in ForCausalLMLoss unless `shift_labels` is given; the mean is over the targets that are not
    `ignore_index`, or the sum divided by `num_items_in_batch` when given. `chunk`: tokens per chunk of the PyTorch
    version (default: chunk_tokens).
    """
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = shift_labels.reshape(-1).to(hidden.device)
    if hidden.is_cuda and liger_fused_linear_cross_entropy is not None:
        # the weight's real rows: a view, and Liger never sees the padded ones
        total = liger_fused_linear_cross_entropy(hidden, weight[:vocab_size], targets, ignore_index=ignore_index,
                                                 reduction="sum")
    else:
        need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
        chunk = chunk or chunk_tokens(*hidden.shape, weight.shape[0])
        total = ChunkedLinearCrossEntropy.apply(hidden, weight, targets, vocab_size, ignore_index, need_grad, chunk)
    if num_items_in_batch is None:
        return total / (targets != ignore_index).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch
