"""Weights to and from transformers' own architectures.

Classic GPT (LayerNorm, GELU, learned positions) <-> `GPT2LMHeadModel`;
modern GPT (RMSNorm, SwiGLU, RoPE, no biases) <-> `LlamaForCausalLM`, or `Qwen3ForCausalLM` with qk_norm.
The padded vocabulary rows are dropped on the way out and zero-filled on the way in.
Ships with the model as remote code, so it imports only torch, transformers and its siblings.
"""

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from .configuration_gpt import GPTConfig
from .modeling_gpt import GPTForCausalLM

CLASSIC = dict(norm="layernorm", mlp="gelu", position_embedding="learned")
MODERN = dict(norm="rmsnorm", mlp="swiglu", position_embedding="rope", bias=False)


def _variant(config: GPTConfig) -> str:
    if all(getattr(config, k) == v for k, v in MODERN.items()):
        return "qwen3" if config.qk_norm else "llama"
    if config.qk_norm:
        raise ValueError(f"qk_norm exports only with the modern variant (Qwen3ForCausalLM needs {MODERN})")
    if all(getattr(config, k) == v for k, v in CLASSIC.items()):
        return "gpt2"
    combo = {k: getattr(config, k) for k in ("norm", "mlp", "position_embedding", "bias")}
    raise ValueError(
        f"no native transformers twin for {combo}: GPT2LMHeadModel needs {CLASSIC}, "
        f"LlamaForCausalLM needs {MODERN}"
    )


NATIVE_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def native_class_name(config: GPTConfig) -> str:
    """The transformers class that `to_hf_native` gives for this config (ValueError if there is none)."""
    return NATIVE_CLASSES[_variant(config)]


def _common_fields(config: GPTConfig) -> dict:
    return dict(
        vocab_size=config.vocab_size, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, tie_word_embeddings=config.tie_word_embeddings,
    )


def _gpt2_keys(config: GPTConfig):
    """(ours, theirs, transpose) for every tensor; GPT-2's Conv1D stores weights as (in, out)."""
    keys = [("transformer.wte.weight", "transformer.wte.weight", False),
            ("transformer.wpe.weight", "transformer.wpe.weight", False)]
    for i in range(config.n_layer):
        p = f"transformer.h.{i}."
        for name in ("ln_1", "ln_2"):
            keys += [(p + name + ".weight", p + name + ".weight", False), (p + name + ".bias", p + name + ".bias", False)]
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            keys += [(p + name + ".weight", p + name + ".weight", True), (p + name + ".bias", p + name + ".bias", False)]
    keys += [("transformer.ln_f.weight", "transformer.ln_f.weight", False),
             ("transformer.ln_f.bias", "transformer.ln_f.bias", False)]
    if not config.tie_word_embeddings:
        keys.append(("lm_head.weight", "lm_head.weight", False))
    return keys


def _modern_state_dict(model: GPTForCausalLM) -> dict:
    """Llama's (and Qwen3's) tensor names; Qwen3 adds q_norm / k_norm per layer."""
    cfg, sd = model.config, model.state_dict()
    C, n = cfg.n_embd, cfg.n_inner
    out = {"model.embed_tokens.weight": sd["transformer.wte.weight"][: cfg.vocab_size],
           "model.norm.weight": sd["transformer.ln_f.weight"]}
    for i in range(cfg.n_layer):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        wq, wk, wv = sd[p + "attn.c_attn.weight"].split(C, dim=0)
        gate, up = sd[p + "mlp.c_fc.weight"].split(n, dim=0)
        out.update({
            q + "input_layernorm.weight": sd[p + "ln_1.weight"],
            q + "post_attention_layernorm.weight": sd[p + "ln_2.weight"],
            q + "self_attn.q_proj.weight": wq, q + "self_attn.k_proj.weight": wk, q + "self_attn.v_proj.weight": wv,
            q + "self_attn.o_proj.weight": sd[p + "attn.c_proj.weight"],
            q + "mlp.gate_proj.weight": gate, q + "mlp.up_proj.weight": up,
            q + "mlp.down_proj.weight": sd[p + "mlp.c_proj.weight"],
        })
        if cfg.qk_norm:
            out[q + "self_attn.q_norm.weight"] = sd[p + "attn.q_norm.weight"]
            out[q + "self_attn.k_norm.weight"] = sd[p + "attn.k_norm.weight"]
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"][: cfg.vocab_size]
    return out


def _pad_vocab(weight: torch.Tensor, padded: int) -> torch.Tensor:
    return torch.cat([weight, weight.new_zeros(padded - weight.shape[0], weight.shape[1])])


def _load(model: GPTForCausalLM, state: dict) -> GPTForCausalLM:
    cfg = model.config
    for key in ("transformer.wte.weight", "lm_head.weight"):
        if key in state:
            state[key] = _pad_vocab(state[key], cfg.padded_vocab_size)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # with tied embeddings lm_head.weight is the same tensor as wte and needs no entry of its own
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"conversion left missing={missing} unexpected={unexpected}")
    return model


def to_hf_native(model: GPTForCausalLM):
    """A GPT2LMHeadModel, LlamaForCausalLM or Qwen3ForCausalLM holding exactly our weights (same dtype, on CPU)."""
    cfg = model.config
    variant = _variant(cfg)
    if variant == "gpt2":
        native_cfg = GPT2Config(
            n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
            n_inner=cfg.n_inner, activation_function="gelu_new", layer_norm_epsilon=cfg.layer_norm_epsilon,
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
            initializer_range=cfg.initializer_range, **_common_fields(cfg),
        )
        sd = model.state_dict()
        state = {}
        for ours, theirs, transpose in _gpt2_keys(cfg):
            if ours not in sd:  # bias=False: GPT-2 always has biases, and zero biases are the same function
                weight = sd[ours.replace(".bias", ".weight")]
                state[theirs] = weight.new_zeros(weight.shape[0])
                continue
            t = sd[ours].t() if transpose else sd[ours]
            state[theirs] = t[: cfg.vocab_size] if ours.endswith(("wte.weight", "lm_head.weight")) else t
        native = GPT2LMHeadModel(native_cfg)
    else:
        fields = dict(
            hidden_size=cfg.n_embd, intermediate_size=cfg.n_inner, num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head, head_dim=cfg.head_dim,
            max_position_embeddings=cfg.n_positions, rms_norm_eps=cfg.layer_norm_epsilon, hidden_act="silu",
            rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
            attention_bias=False, attention_dropout=cfg.dropout,
            initializer_range=cfg.initializer_range, **_common_fields(cfg),
        )
        if variant == "qwen3":
            native = Qwen3ForCausalLM(Qwen3Config(use_sliding_window=False, **fields))
        else:
            native = LlamaForCausalLM(LlamaConfig(mlp_bias=False, **fields))
        state = _modern_state_dict(model)
    native.to(next(model.parameters()).dtype)
    native.load_state_dict({k: v.detach().clone().cpu() for k, v in state.items()}, strict=not cfg.tie_word_embeddings)
    native.tie_weights()
    native.eval()
    return native


def _load_native(cls, name, kwargs):
    """cls.from_pretrained(name) from a folder or the Hub cache, and from the Hub only when it can be reached."""
    from .network import load_local_or_hub

    fix = (f"pass a folder saved with {cls.__name__}.save_pretrained, or download it once on a machine with network "
           f"(`hf download {name}`) and set HF_HUB_OFFLINE=1")
    return load_local_or_hub(lambda n, **kw: cls.from_pretrained(n, **kwargs, **kw), str(name), f"{cls.__name__}", fix)


def from_gpt2(model_or_path, **from_pretrained_kwargs) -> GPTForCausalLM:
    """Our classic GPT from a GPT2LMHeadModel object, or a folder / Hub id loadable by it."""
    native = model_or_path
    if not isinstance(native, GPT2LMHeadModel):
        native = _load_native(GPT2LMHeadModel, model_or_path, from_pretrained_kwargs)
    c = native.config
    if c.activation_function != "gelu_new" or c.scale_attn_by_inverse_layer_idx or not c.scale_attn_weights:
        raise ValueError(
            f"only GPT-2's own attention and activation convert exactly: got activation_function="
            f"{c.activation_function!r}, scale_attn_weights={c.scale_attn_weights}, "
            f"scale_attn_by_inverse_layer_idx={c.scale_attn_by_inverse_layer_idx} "
            "(need 'gelu_new', True, False)"
        )
    cfg = GPTConfig(
        vocab_size=c.vocab_size, n_positions=c.n_positions, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        n_inner=c.n_inner or 4 * c.n_embd, layer_norm_epsilon=c.layer_norm_epsilon, dropout=c.resid_pdrop,
        initializer_range=c.initializer_range, bias=True, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id, tie_word_embeddings=c.tie_word_embeddings, **CLASSIC,
    )
    sd = native.state_dict()
    state = {ours: (sd[theirs].t() if transpose else sd[theirs]).clone() for ours, theirs, transpose in _gpt2_keys(cfg)}
    return _load(GPTForCausalLM(cfg).to(native.dtype), state).eval()


def from_llama(model_or_path, **from_pretrained_kwargs) -> GPTForCausalLM:
    """Our modern GPT from a LlamaForCausalLM (multi-head attention, default RoPE, no biases)."""
    native = model_or_path
    if not isinstance(native, LlamaForCausalLM):
        native = _load_native(LlamaForCausalLM, model_or_path, from_pretrained_kwargs)
    return _from_modern(native, qk_norm=False)


def from_qwen3(model_or_path, **from_pretrained_kwargs) -> GPTForCausalLM:
    """Our modern GPT with qk_norm from a Qwen3ForCausalLM (multi-head attention, default RoPE, no sliding window)."""
    native = model_or_path
    if not isinstance(native, Qwen3ForCausalLM):
        native = _load_native(Qwen3ForCausalLM, model_or_path, from_pretrained_kwargs)
    return _from_modern(native, qk_norm=True)


def _from_modern(native, qk_norm: bool) -> GPTForCausalLM:
    c = native.config
    rope = c.rope_parameters or {}
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    problems = {
        "num_key_value_heads": (c.num_key_value_heads, c.num_attention_heads),
        "head_dim": (head_dim, c.hidden_size // c.num_attention_heads),
        "rope_type": (rope.get("rope_type", "default"), "default"),
        "attention_bias": (c.attention_bias, False), "mlp_bias": (getattr(c, "mlp_bias", False), False),
        "hidden_act": (c.hidden_act, "silu"), "sliding_window": (getattr(c, "sliding_window", None), None),
    }
    bad = {k: got for k, (got, want) in problems.items() if got != want}
    if bad:
        name = type(native).__name__
        raise ValueError(f"this {name} has no GPT twin: {bad}; need { {k: w for k, (_, w) in problems.items()} }")
    cfg = GPTConfig(
        vocab_size=c.vocab_size, n_positions=c.max_position_embeddings, n_embd=c.hidden_size,
        n_layer=c.num_hidden_layers, n_head=c.num_attention_heads, n_inner=c.intermediate_size,
        layer_norm_epsilon=c.rms_norm_eps, rope_theta=rope.get("rope_theta", 10000.0), dropout=c.attention_dropout,
        initializer_range=c.initializer_range, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id, tie_word_embeddings=c.tie_word_embeddings, qk_norm=qk_norm, **MODERN,
    )
    sd = native.state_dict()
    state = {"transformer.wte.weight": sd["model.embed_tokens.weight"], "transformer.ln_f.weight": sd["model.norm.weight"]}
    for i in range(cfg.n_layer):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        a, m = q + "self_attn.", q + "mlp."
        state.update({
            p + "ln_1.weight": sd[q + "input_layernorm.weight"],
            p + "ln_2.weight": sd[q + "post_attention_layernorm.weight"],
            p + "attn.c_attn.weight": torch.cat([sd[a + "q_proj.weight"], sd[a + "k_proj.weight"], sd[a + "v_proj.weight"]]),
            p + "attn.c_proj.weight": sd[a + "o_proj.weight"],
            p + "mlp.c_fc.weight": torch.cat([sd[m + "gate_proj.weight"], sd[m + "up_proj.weight"]]),
            p + "mlp.c_proj.weight": sd[m + "down_proj.weight"],
        })
        if qk_norm:
            state[p + "attn.q_norm.weight"] = sd[a + "q_norm.weight"]
            state[p + "attn.k_norm.weight"] = sd[a + "k_norm.weight"]
    if not cfg.tie_word_embeddings:
        state["lm_head.weight"] = sd["lm_head.weight"]
    state = {k: v.clone() for k, v in state.items()}
    return _load(GPTForCausalLM(cfg).to(native.dtype), state).eval()
