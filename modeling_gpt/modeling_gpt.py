"""The GPT: classic GPT-2 (LayerNorm, GELU, learned positions) and a modern variant (RMSNorm, SwiGLU, RoPE).

Shipped to the Hub as remote code: imports nothing but torch, transformers and its sibling config.
"""

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .configuration_gpt import GPTConfig
from .loss import fused_linear_cross_entropy

logger = logging.get_logger(__name__)

# transformers 5.24 renamed the KV cache from `past_key_values` to `cache` (in forward, outputs and masks). This file
# runs as remote code on whatever release a user has: it takes the cache under either name and passes it on under
# the name of the installed release, so that no release sees a deprecated name or a cache it does not read.
CACHE = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def accepts_old_cache_name(forward):
    """On releases that renamed the cache, `past_key_values=` still works and warns, as transformers' own models do."""
    if CACHE != "cache":
        return forward
    from transformers.utils.deprecation import deprecate_kwarg

    return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)


def either_cache(cache, past_key_values):
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the KV cache as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


def check_token_ids(ids: torch.Tensor, vocab_size: int, name: str):
    """Ids are real tokens: the embedding's padded rows (vocab_size up to the next multiple) are no token, and a label
    there would be an infinite loss. Asserted on the device, so an accelerator reports it at its next sync, as it does
    an id past the embedding, and a training step pays no sync for it."""
    if ids.numel():
        torch._assert_async(
            ids.max() < vocab_size, f"{name} holds a token id >= vocab_size={vocab_size}: ids must be in [0, {vocab_size})"
        )


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain softmax attention, the reference the fused kernels are checked against."""
    att = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, nh, T, S)
    if attention_mask is not None:
        att = att + attention_mask
    att = F.softmax(att, dim=-1, dtype=torch.float32).to(query.dtype)
    att = F.dropout(att, p=dropout, training=module.training)
    out = torch.matmul(att, value).transpose(1, 2).contiguous()  # (B, T, nh, hs)
    return out, att


def causal_mask(config, inputs_embeds, attention_mask, position_ids, cache, past):
    """The mask for the attention, or None where the kernel's own is_causal=True is the whole mask.

    No padding mask, no positions of the caller's (packed sequences) and nothing cached: sdpa and flash attention
    need no mask, and we decide it from Python values alone. transformers' create_causal_mask decides it too, but never
    when traced (upstream issue 48925), so a compiled forward would hand sdpa a (B, 1, T, T) mask and is_causal=False.
    Everything else goes to create_causal_mask unchanged, which eagerly also skips an all-ones attention_mask (by
    reading it); under compile such a mask is kept. The caller's position_ids (None: ours, never packed) go as given.
    """
    if (attention_mask is None and position_ids is None and isinstance(past, int) and past == 0
            and not getattr(cache, "is_compileable", False)
            and (config._attn_implementation == "sdpa" or config._attn_implementation.startswith("flash_attention"))):
        return None
    return create_causal_mask(
        config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
        **{CACHE: cache},
    )


class GPTRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in fp32 like Llama so that bf16 training and the native export agree
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return GPTRMSNorm(config.n_embd, config.layer_norm_epsilon)
    return nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)


class GPTRotaryEmbedding(nn.Module):
    """cos/sin tables for RoPE in the rotate-half convention, so the weights match Llama's."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        dim = self.config.head_dim
        return 1.0 / (self.config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))

    @torch.no_grad()
    def forward(self, x, position_ids):
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)  # (B, T, hs/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hs)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class GPTAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        # q, k, v for all heads in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.is_residual_projection = True
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.qk_norm:  # per head, over head_dim, like Qwen3
            self.q_norm = GPTRMSNorm(self.head_dim, config.layer_norm_epsilon)
            self.k_norm = GPTRMSNorm(self.head_dim, config.layer_norm_epsilon)

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, cache=None,
                attn_implementation=None, **kwargs):
        B, T, C = hidden_states.shape
        q, k, v = self.c_attn(hidden_states).view(B, T, 3, self.config.n_head, self.head_dim).unbind(2)
        if self.config.qk_norm:  # before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs)
        if position_embeddings is not None:
            q, k = apply_rotary(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, nh, S, hs) with S = past + T

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            attn_implementation or self.config._attn_implementation, eager_attention_forward
        )
        y, att = attention_interface(
            self, q, k, v, attention_mask,
            dropout=self.config.dropout if self.training else 0.0, scaling=self.scaling, **kwargs,
        )
        y = y.reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y)), att


class GPTMLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        # SwiGLU computes its gate and up projections in one matmul: c_fc = [gate; up]
        n_out = 2 * config.n_inner if self.swiglu else config.n_inner
        self.c_fc = nn.Linear(config.n_embd, n_out, bias=config.bias)
        self.c_proj = nn.Linear(config.n_inner, config.n_embd, bias=config.bias)
        self.c_proj.is_residual_projection = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")  # GPT-2's "gelu_new"
        return self.dropout(self.c_proj(h))


class GPTBlock(GradientCheckpointingLayer):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = GPTAttention(config, layer_idx)
        self.ln_2 = make_norm(config)
        self.mlp = GPTMLP(config)

    # the cache arrives under the installed release's name: GradientCheckpointingLayer drops it by that name
    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, cache=None, past_key_values=None,
                **kwargs):
        attn_out, att = self.attn(
            self.ln_1(hidden_states), attention_mask=attention_mask, position_embeddings=position_embeddings,
            cache=either_cache(cache, past_key_values), **kwargs,
        )
        hidden_states = hidden_states + attn_out
        return hidden_states + self.mlp(self.ln_2(hidden_states)), att


class GPTPreTrainedModel(PreTrainedModel):
    config_class = GPTConfig
    config: GPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GPTBlock"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    @torch.no_grad()
    def _init_weights(self, module):
        # GPT-2's scheme: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 * n_layer)
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                std = 0.0 if self.config.zero_init_residual else std / math.sqrt(2 * self.config.n_layer)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (nn.LayerNorm, GPTRMSNorm)):
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, GPTRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """Resize to `new_num_tokens` real tokens, as transformers' own models do: the embedding then has exactly
        that many rows, or the next multiple of `pad_to_multiple_of` when given (the padded rows are never scored or
        sampled). `config.vocab_size` counts the real tokens."""
        if new_num_tokens is None:
            return self.get_input_embeddings()
        multiple = pad_to_multiple_of or 1
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.config.vocab_size, self.config.pad_vocab_size_multiple = new_num_tokens, multiple
        return embeddings

    def as_requested(self, output, return_dict: bool | None):
        """The output object, or its tuple of non-None fields when `return_dict=False` (argument or config)."""
        return output if (self.config.return_dict if return_dict is None else return_dict) else output.to_tuple()


class GPTModel(GPTPreTrainedModel):
    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        if config.position_embedding == "learned":
            self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        else:
            self.rotary_emb = GPTRotaryEmbedding(config)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([GPTBlock(config, i) for i in range(config.n_layer)])
        self.ln_f = make_norm(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, new_embeddings):
        self.wte = new_embeddings

    def attention_for_call(self, output_attentions: bool) -> str:
        """The configured attention, or eager for a call that asks for the attention probabilities (which the fused
        kernels never materialise): transformers' own models return none there; ours returns them, with a warning."""
        implementation = self.config._attn_implementation
        if output_attentions and implementation != "eager":
            logger.warning_once(
                f"`{implementation}` attention does not return attention probabilities: calls with "
                "output_attentions=True run the eager attention instead (set_attn_implementation('eager') avoids this)"
            )
            return "eager"
        return implementation

    def check_positions(self, position_ids, past, length: int):
        """Learned positions stop at n_positions. Without position_ids the row length (cache included) is checked, on
        shapes only, which costs no GPU sync; given ones are checked by value on the CPU, and on an accelerator by the
        embedding's own bounds check (reading them here would sync every step). A static cache, whose length is a
        tensor, is sized by generate() and compiled: it is left to its own bounds."""
        if self.config.position_embedding != "learned":
            return
        limit = self.config.n_positions
        if position_ids is None:
            if isinstance(past, int) and past + length > limit:
                raise ValueError(
                    f"{past + length} tokens (cache included) exceed the model's n_positions={limit}: shorten the "
                    "input or max_new_tokens"
                )
        elif position_ids.device.type == "cpu" and not torch.compiler.is_compiling() and position_ids.numel():
            highest = int(position_ids.max())
            if highest >= limit:
                raise ValueError(f"position id {highest} is past the model's n_positions={limit}: use ids in [0, {limit - 1}]")

    @accepts_old_cache_name
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        cache = either_cache(cache, past_key_values)
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        implementation = self.attention_for_call(output_attentions)
        if inputs_embeds is None:
            check_token_ids(input_ids, self.config.vocab_size, "input_ids")
            inputs_embeds = self.wte(input_ids)  # (B, T, C)
        if use_cache is None:  # a cache only helps inference: training never pays for one unless asked
            use_cache = self.config.use_cache and not self.training
        if not use_cache:
            cache = None
        elif cache is None:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        self.check_positions(position_ids, past, inputs_embeds.shape[1])
        mask_config = self.config
        if implementation != self.config._attn_implementation:
            mask_config = copy.copy(self.config)
            mask_config._attn_implementation = implementation
        mask = causal_mask(mask_config, inputs_embeds, attention_mask, position_ids, cache, past)
        if position_ids is None:
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past)[None]

        x = inputs_embeds
        position_embeddings = None
        if self.config.position_embedding == "learned":
            x = x + self.wpe(position_ids)
        else:
            position_embeddings = self.rotary_emb(x, position_ids)
        x = self.drop(x)
        hidden_states, attentions = [], []
        for block in self.h:
            hidden_states.append(x)
            x, att = block(x, attention_mask=mask, position_embeddings=position_embeddings, **{CACHE: cache},
                           attn_implementation=implementation, **kwargs)
            attentions.append(att)
        x = self.ln_f(x)
        hidden_states.append(x)  # the last entry is the final, normalised state, as in transformers' own models
        out = BaseModelOutputWithPast(
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
            **{CACHE: cache},
        )
        return self.as_requested(out, return_dict)


class GPTForCausalLM(GPTPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}
    _fsdp_plan = {"lm_head": "keep_full_weight"}  # with ln_f: the tail, whose weights backward needs first

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.transformer = GPTModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    @accepts_old_cache_name
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        skip_logits: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        out = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=either_cache(cache, past_key_values), inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True, **kwargs,
        )
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        hidden = out.last_hidden_state[:, keep, :]
        loss, logits = self.loss_and_logits(hidden, labels, skip_logits, **kwargs)
        result = CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=out.hidden_states,
            attentions=out.attentions, **{CACHE: getattr(out, CACHE)},
        )
        return self.as_requested(result, return_dict)

    def loss_and_logits(self, hidden, labels, skip_logits, **kwargs):
        """(loss, logits over the real vocabulary). `skip_logits` (Liger's name; default: training with labels and
        `config.fused_loss`) computes the loss straight from `hidden` and returns no logits."""
        if skip_logits is None:
            skip_logits = self.config.fused_loss and self.training and labels is not None
        if labels is not None:
            check_token_ids(labels, self.config.vocab_size, "labels")
        if skip_logits:
            if labels is None:
                raise ValueError("skip_logits=True needs labels: without them there is no loss to compute")
            loss = fused_linear_cross_entropy(hidden, self.lm_head.weight, labels, self.config.vocab_size, **kwargs)
            return loss, None
        logits = self.lm_head(hidden)  # (B, T, padded_vocab_size)
        loss = None
        if labels is not None:
            # -inf on the padded columns lets the loss read the contiguous padded logits (no copy of a sliced (B, T, V)
            # tensor) with no probability mass on the padded ids; outside autograd, because their gradient is zero
            # anyway and a recorded in-place write would copy the whole gradient in backward
            with torch.no_grad():
                logits[..., self.config.vocab_size :] = float("-inf")
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1], **kwargs)
        # the padded vocabulary rows exist only for speed: they are never returned, scored or sampled
        return loss, logits[..., : self.config.vocab_size]

    def to_hf_native(self):
        """The same weights as transformers' own GPT2LMHeadModel (classic) or LlamaForCausalLM (modern)."""
        from .convert import to_hf_native

        return to_hf_native(self)

    @classmethod
    def from_gpt2(cls, model_or_path, **kwargs):
        """Our model from transformers' GPT2LMHeadModel (an object or a folder/Hub id such as OpenAI's `gpt2`)."""
        from .convert import from_gpt2
        # convert.py imports network.py; transformers 5.4 copies only the direct relative imports of a local folder's
        # remote code into its module cache, so this file names it too (else loading from a folder fails there)
        from .network import load_local_or_hub  # noqa: F401

        return from_gpt2(model_or_path, **kwargs)


__all__ = ["GPTPreTrainedModel", "GPTModel", "GPTForCausalLM"]
