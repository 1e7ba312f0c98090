"""Models: the baseline LLaVA-NeXT decoder and the ProxyV decoder, for every supported decoder family
(Llama incl. Llama-3 and converted InternLM2.5, Mistral, Qwen2 / Qwen2.5, Qwen3, Phi-3)."""

from .language_model.families import (
    FAMILIES,
    LlavaConfig,
    LlavaLlamaForCausalLM,
    LlavaLlamaModel,
    LlavaProxyVConfig,
    LlavaProxyVLlamaForCausalLM,
    LlavaProxyVLlamaModel,
    LlavaPyramidDropLlamaForCausalLM,
    family_for_llm,
    family_for_model_type,
)

__all__ = [
    "FAMILIES",
    "LlavaConfig",
    "LlavaLlamaForCausalLM",
    "LlavaLlamaModel",
    "LlavaProxyVConfig",
    "LlavaProxyVLlamaForCausalLM",
    "LlavaProxyVLlamaModel",
    "LlavaPyramidDropLlamaForCausalLM",
    "family_for_llm",
    "family_for_model_type",
]
