"""Benchmarks for any Hugging Face causal LM: HellaSwag (lm-eval and build-nanogpt scorings), LAMBADA,
WikiText-2, PIQA, ARC, Winogrande; validation loss over token shards; training-curve plots."""

from .results import format_table, save_results
from .tasks import TASKS, run_tasks
from .val_loss import mean_loss, val_loss

__all__ = ["TASKS", "format_table", "run_tasks", "save_results", "mean_loss", "val_loss"]
