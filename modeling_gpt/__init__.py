"""modeling-gpt: GPT-2-class models as first-class Hugging Face models.

Importing the package registers `GPTConfig` / `GPTModel` / `GPTForCausalLM` with the Auto classes,
and marks them so that `save_pretrained` writes `auto_map` and copies the code files next to the
weights: a saved folder then loads anywhere with `trust_remote_code=True`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_gpt import PRESETS, GPTConfig
from .modeling_gpt import GPTForCausalLM, GPTModel, GPTPreTrainedModel

AutoConfig.register(GPTConfig.model_type, GPTConfig, exist_ok=True)
AutoModel.register(GPTConfig, GPTModel, exist_ok=True)
AutoModelForCausalLM.register(GPTConfig, GPTForCausalLM, exist_ok=True)
GPTConfig.register_for_auto_class()
GPTModel.register_for_auto_class("AutoModel")
GPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["PRESETS", "GPTConfig", "GPTModel", "GPTForCausalLM", "GPTPreTrainedModel"]
