"""The validation loss never holds the whole batch's float32 logits and log-softmax: it is computed a few rows at a
time, and equals the whole-batch cross-entropy."""

import importlib

import torch
import torch.nn.functional as F

val_loss = importlib.import_module("eval.val_loss")  # the module, not the function eval exports under that name


def test_chunked_cross_entropy_equals_the_whole_batch_in_small_chunks(monkeypatch):
    torch.manual_seed(0)
    logits, targets = torch.randn(7, 16, 300).to(torch.bfloat16), torch.randint(0, 300, (7, 16))
    monkeypatch.setattr(val_loss, "CHUNK_BYTES", 2 * 16 * 300 * 4)  # two rows of float32 logits
    seen, cross_entropy = [], F.cross_entropy

    def spy(input, target, **kwargs):
        seen.append((input.shape, input.dtype))
        return cross_entropy(input, target, **kwargs)

    monkeypatch.setattr(val_loss.F, "cross_entropy", spy)
    got = val_loss.chunked_cross_entropy(logits, targets)
    monkeypatch.undo()
    assert seen == [((32, 300), torch.float32)] * 3 + [((16, 300), torch.float32)]
    want = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    torch.testing.assert_close(got, want)
