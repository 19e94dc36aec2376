"""GPTConfig: one config for classic GPT-2 and its modern variant (RMSNorm, SwiGLU, RoPE, no biases).

Shipped to the Hub as remote code: imports nothing but transformers and the standard library.
"""

import math

import transformers
from transformers import PretrainedConfig

# The oldest release these files run on (they ship as remote code and run on whatever release a user has).
MIN_TRANSFORMERS = (5, 4)
if tuple(int(part) for part in transformers.__version__.split(".")[:2]) < MIN_TRANSFORMERS:
    raise ImportError(
        f"this GPT's code needs transformers>={'.'.join(map(str, MIN_TRANSFORMERS))}, found {transformers.__version__}: "
        "upgrade with `pip install -U transformers`, or use the model's native export (`gpt-push --native`: "
        "transformers' own GPT2LMHeadModel / LlamaForCausalLM), which loads on every release"
    )

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
POSITION_EMBEDDINGS = ("learned", "rope")

# The named sizes. Every preset uses GPT-2's vocabulary and context unless it says otherwise.
PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "gpt2.5": dict(
        n_layer=12, n_head=12, n_embd=768, n_inner=2048, norm="rmsnorm", mlp="swiglu",
        position_embedding="rope", rope_theta=10000.0, bias=False,
    ),
    "tiny": dict(n_layer=2, n_head=4, n_embd=64, n_positions=256),  # for tests and CPU demos
}


class GPTConfig(PretrainedConfig):
    r"""
    Configuration of a GPT. Field names follow transformers' `GPT2Config` where one exists.

    Args:
        vocab_size: number of real tokens (50257 for GPT-2). Logits are returned for these only.
        pad_vocab_size_multiple: the embedding is padded to a multiple of this (50257 -> 50304) for
            faster matmuls; the padded ids can never be sampled or scored.
        n_positions: maximum sequence length.
        n_embd, n_layer, n_head: width, depth and number of attention heads.
        n_inner: hidden size of the MLP; default 4 * n_embd (GELU) or 8/3 * n_embd rounded up to a
            multiple of 64 (SwiGLU).
        layer_norm_epsilon: epsilon of LayerNorm / RMSNorm.
        dropout: dropout on embeddings, attention probabilities and residual branches.
        bias: biases in Linear layers and LayerNorms.
        norm: "layernorm" or "rmsnorm".
        mlp: "gelu" (GPT-2's tanh-approximated GELU) or "swiglu".
        position_embedding: "learned" (absolute, GPT-2) or "rope" (rotary).
        rope_theta: RoPE base frequency.
        initializer_range: std of the normal init; residual projections use it / sqrt(2 * n_layer).
        tie_word_embeddings: share the input embedding with the output head.
        qk_norm: RMSNorm over the head dimension of queries and keys, before RoPE (Qwen3's convention;
            the modern variant with it exports as `Qwen3ForCausalLM`).
        zero_init_residual: start the residual projections (attention and MLP `c_proj`) at zero, so that
            every block begins as the identity. Changes the init only.
        fused_loss: in training with labels, compute the loss straight from the last hidden states, a chunk of
            tokens at a time (Liger Kernel's fused linear cross-entropy on CUDA where installed), so the (B, T, V)
            logits never exist and `logits` is None; the forward's `skip_logits` overrides it per call.
    """

    model_type = "gpt"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the KV cache under both its names
    # FSDP2 units of transformers' distributed loading, under GPTModel's own module names (the default names Llama's)
    base_model_fsdp_plan = {"wte": "free_full_weight", "h.*": "free_full_weight", "ln_f": "keep_full_weight"}
    attribute_map = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "n_positions",
        "intermediate_size": "n_inner",
    }

    def __init__(
        self,
        vocab_size=50257,
        pad_vocab_size_multiple=64,
        n_positions=1024,
        n_embd=768,
        n_layer=12,
        n_head=12,
        n_inner=None,
        layer_norm_epsilon=1e-5,
        dropout=0.0,
        bias=True,
        norm="layernorm",
        mlp="gelu",
        position_embedding="learned",
        rope_theta=10000.0,
        initializer_range=0.02,
        tie_word_embeddings=True,
        qk_norm=False,
        zero_init_residual=False,
        fused_loss=False,
        bos_token_id=50256,
        eos_token_id=50256,
        pad_token_id=None,
        use_cache=True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.pad_vocab_size_multiple = pad_vocab_size_multiple
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        if n_inner is None:
            n_inner = 4 * n_embd if mlp == "gelu" else -(-8 * n_embd // 3 // 64) * 64
        self.n_inner = n_inner
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout
        self.bias = bias
        self.norm = norm
        self.mlp = mlp
        self.position_embedding = position_embedding
        self.rope_theta = rope_theta
        self.initializer_range = initializer_range
        self.tie_word_embeddings = tie_word_embeddings
        self.qk_norm = qk_norm
        self.zero_init_residual = zero_init_residual
        self.fused_loss = fused_loss
        self.use_cache = use_cache
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        super().__init__(**kwargs)
        self.validate()

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return -(-self.vocab_size // m) * m

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def validate(self):
        """Our checks (ValueError naming the bad field and what is allowed), then transformers' own where the
        installed release has them. Special token ids outside the vocabulary are left to transformers, which warns
        (5.24) or accepts them (5.4), as it does for its own GPT2Config."""
        choices = {"norm": NORMS, "mlp": MLPS, "position_embedding": POSITION_EMBEDDINGS}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field}={getattr(self, field)!r} is not supported; use one of {allowed}")
        positive = ("vocab_size", "pad_vocab_size_multiple", "n_positions", "n_embd", "n_layer", "n_head", "n_inner")
        for field in positive:
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field}={value!r} must be a positive integer")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} must be divisible by n_head={self.n_head} "
                f"(e.g. n_head in {[h for h in range(1, min(self.n_embd, 64) + 1) if self.n_embd % h == 0]})"
            )
        if self.position_embedding == "rope" and self.head_dim % 2:
            raise ValueError(
                f"position_embedding='rope' needs an even head size, got n_embd/n_head = "
                f"{self.n_embd}/{self.n_head} = {self.head_dim}"
            )
        for field in ("qk_norm", "zero_init_residual", "fused_loss"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{field}={getattr(self, field)!r} must be true or false")
        for field in ("layer_norm_epsilon", "rope_theta", "initializer_range", "dropout"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{field}={value!r} must be a finite number")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must be in [0, 1)")
        if self.layer_norm_epsilon <= 0:
            raise ValueError(f"layer_norm_epsilon={self.layer_norm_epsilon!r} must be > 0")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta={self.rope_theta!r} must be > 0")
        if self.initializer_range < 0:
            raise ValueError(f"initializer_range={self.initializer_range!r} must be >= 0")
        base_validate = getattr(super(), "validate", None)
        if base_validate is not None:
            base_validate()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        """A named size (`gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`, `gpt2.5`, `tiny`) with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


__all__ = ["GPTConfig", "PRESETS"]
