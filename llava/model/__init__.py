"""Models: the baseline LLaVA-NeXT Llama and (with `proxyv`) the ProxyV decoder."""

from .language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM, LlavaLlamaModel

__all__ = ["LlavaConfig", "LlavaLlamaForCausalLM", "LlavaLlamaModel"]
