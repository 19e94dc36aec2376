"""A plain PyTorch GPT-2: the yardstick of bench/train_throughput.py's `plain` row and of the GPU suite.

No transformers, no attention interface, no mask: one module per job, `F.scaled_dot_product_attention(is_causal=True)`,
the head tied to the token embedding, GPT-2's initialisation (N(0, 0.02), residual projections / sqrt(2 * n_layer)).
It reads the geometry from a GPTConfig (classic variant: learned positions, LayerNorm, GELU) so that it has exactly
the parameters of GPTForCausalLM, padded vocabulary included, and takes the same `(input_ids, labels)` call, so
that the benchmark's loop runs both unchanged. Like nanoGPT, the loss is taken over the padded vocabulary (the
padding rows are never a target). What it leaves out is what a benchmark of the training step does not need:
caches, padding masks, generation, dropout.
"""

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.proj.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, n_embd: int, n_inner: int, bias: bool):
        super().__init__()
        self.up = nn.Linear(n_embd, n_inner, bias=bias)
        self.down = nn.Linear(n_inner, n_embd, bias=bias)
        self.down.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, n_inner: int, bias: bool, eps: float):
        super().__init__()
        self.norm_attn = nn.LayerNorm(n_embd, eps=eps, bias=bias)
        self.attn = SelfAttention(n_embd, n_head, bias)
        self.norm_mlp = nn.LayerNorm(n_embd, eps=eps, bias=bias)
        self.mlp = MLP(n_embd, n_inner, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x))
        return x + self.mlp(self.norm_mlp(x))


class PlainGPT(nn.Module):
    """GPT-2 in plain PyTorch; `config` is a classic GPTConfig (only its geometry is read)."""

    def __init__(self, config):
        super().__init__()
        if (config.norm, config.mlp, config.position_embedding) != ("layernorm", "gelu", "learned"):
            raise ValueError(f"the plain reference is GPT-2 (layernorm, gelu, learned positions); got "
                             f"{config.norm}, {config.mlp}, {config.position_embedding}")
        self.config = config
        C = config.n_embd
        self.tok_emb = nn.Embedding(config.padded_vocab_size, C)
        self.pos_emb = nn.Embedding(config.n_positions, C)
        self.blocks = nn.ModuleList(Block(C, config.n_head, config.n_inner, config.bias, config.layer_norm_epsilon)
                                    for _ in range(config.n_layer))
        self.norm = nn.LayerNorm(C, eps=config.layer_norm_epsilon, bias=config.bias)
        self.head = nn.Linear(C, config.padded_vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied
        self.apply(self._init)

    def _init(self, module: nn.Module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            scale = 1 / math.sqrt(2 * self.config.n_layer) if getattr(module, "residual", False) else 1.0
            nn.init.normal_(module.weight, 0.0, std * scale)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)

    @classmethod
    def from_ours(cls, model) -> "PlainGPT":
        """The reference holding a classic GPTForCausalLM's weights (same layout: q, k, v stacked, head by head)."""
        plain = cls(model.config)
        names = {"tok_emb": "transformer.wte", "pos_emb": "transformer.wpe", "norm": "transformer.ln_f"}
        for i in range(model.config.n_layer):
            ours = f"transformer.h.{i}"
            names |= {f"blocks.{i}.norm_attn": f"{ours}.ln_1", f"blocks.{i}.attn.qkv": f"{ours}.attn.c_attn",
                      f"blocks.{i}.attn.proj": f"{ours}.attn.c_proj", f"blocks.{i}.norm_mlp": f"{ours}.ln_2",
                      f"blocks.{i}.mlp.up": f"{ours}.mlp.c_fc", f"blocks.{i}.mlp.down": f"{ours}.mlp.c_proj"}
        theirs = model.state_dict()
        state = {}
        for key in plain.state_dict():
            module, _, leaf = key.rpartition(".")
            state[key] = theirs[f"{names[module]}.{leaf}"] if module != "head" else theirs["transformer.wte.weight"]
        plain.load_state_dict(state, strict=True)
        return plain

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied matrix once

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                shift_labels: torch.Tensor | None = None) -> SimpleNamespace:
        """logits (B, T, padded vocabulary) and, given labels (shifted here) or shift_labels (already the next tokens,
        as the trainer passes them), the mean next-token loss; -100 is ignored."""
        T = input_ids.shape[1]
        x = self.tok_emb(input_ids) + self.pos_emb(torch.arange(T, device=input_ids.device))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        loss = None
        if shift_labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), shift_labels.flatten(), ignore_index=-100)
        elif labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return SimpleNamespace(loss=loss, logits=logits)
