"""Models: the baseline LLaVA-NeXT Llama and the ProxyV decoder."""

from .language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM, LlavaLlamaModel
from .language_model.proxyv_llama import LlavaProxyVConfig, LlavaProxyVLlamaForCausalLM, LlavaProxyVLlamaModel

__all__ = [
    "LlavaConfig",
    "LlavaLlamaForCausalLM",
    "LlavaLlamaModel",
    "LlavaProxyVConfig",
    "LlavaProxyVLlamaForCausalLM",
    "LlavaProxyVLlamaModel",
]
