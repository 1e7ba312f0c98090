"""Decoder families: one registry row each, from which every LLaVA model class of that family is made.

A `DecoderFamily` names transformers' own classes for a decoder (config, model, causal LM, decoder
layer), how its attention module makes query / key / value heads (`llava.model.attention`), and
the `model_type` names its checkpoints carry. `build_family` subclasses those classes with the
family-neutral mixins — baseline (`llava_decoder`), ProxyV (`proxyv_decoder`, `proxyv.layer`) and
PyramidDrop (`pyramid_drop_decoder`) — and registers the results with the Auto classes, so the
mechanism is written once and a new family is one `DecoderFamily(...)` entry below.

Baseline `model_type` names follow LLaVA-NeXT and the ProxyV release (`llava_llama`, `llava_qwen`
for Qwen2, `llava_phi` for Phi-3, `llava_mistral`); a checkpoint of one of those types with the
authors' `proxyv: true` key is a ProxyV model. Our own ProxyV saves are `llava_proxyv_<family>`.
Llama-3 and converted InternLM2.5 (`python -m llava.tools.convert_internlm2`) are Llama-architecture
models and use the Llama family.
"""

from __future__ import annotations

from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    MistralConfig,
    MistralForCausalLM,
    MistralModel,
    Phi3Config,
    Phi3ForCausalLM,
    Phi3Model,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Model,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
)
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.models.mistral.modeling_mistral import MistralDecoderLayer
from transformers.models.phi3.modeling_phi3 import Phi3DecoderLayer
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

from ..attention import FusedQKVProjection, HeadProjection, QKNormProjections, SeparateProjections
from ..checkpoint_names import register_release_weight_names
from ..proxyv.layer import ProxyVLayerMixin
from .llava_decoder import LlavaCausalLM, LlavaConfigFields, LlavaDecoderModel
from .proxyv_decoder import ProxyVCausalLM, ProxyVConfigFields, ProxyVDecoderModel
from .pyramid_drop_decoder import PyramidDropCausalLM, PyramidDropDecoderModel


@dataclass(frozen=True)
class DecoderFamily:
    """What differs between decoder families, and nothing else."""

    name: str  # "qwen2"
    class_stem: str  # "Qwen": LlavaQwenForCausalLM, LlavaProxyVQwenForCausalLM, ...
    llm_model_types: tuple[str, ...]  # the plain LLMs' model_type this family builds from
    baseline_model_type: str  # "llava_qwen"
    proxyv_model_type: str  # "llava_proxyv_qwen"
    config: type
    model: type
    causal_lm: type
    decoder_layer: type
    projection: HeadProjection
    # How the authors' release of this family maps learned proxies back in the guided update
    # (their Phi-3 file calls the update without `learn_proxy`, so it copies spatially).
    release_learned_proxy_guidance: str = "assignment"
    # Older names of the baseline type in released configs (LLaVA-1.5's "llava", haotian-liu/LLaVA's name
    # before "llava_llama"); read as the baseline type, never written.
    legacy_model_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class FamilyClasses:
    """The classes `build_family` made for one family."""

    family: DecoderFamily
    config: type
    model: type
    causal_lm: type
    proxyv_config: type
    proxyv_layer: type
    proxyv_model: type
    proxyv_causal_lm: type
    pyramid_drop_model: type
    pyramid_drop_causal_lm: type

    @property
    def causal_lm_classes(self) -> tuple[type, ...]:
        return self.causal_lm, self.proxyv_causal_lm, self.pyramid_drop_causal_lm


def _subclass(name: str, bases: tuple[type, ...], **attributes) -> type:
    """A class defined in this module (so it pickles and prints like a hand-written one)."""
    return type(name, bases, {"__module__": __name__, "__qualname__": name, **attributes})


def build_family(family: DecoderFamily) -> FamilyClasses:
    """Subclass the family's transformers classes with the LLaVA, ProxyV and PyramidDrop mixins."""
    stem = family.class_stem
    config = strict(_subclass(f"Llava{stem}Config", (LlavaConfigFields, family.config),
                              model_type=family.baseline_model_type))
    model = _subclass(f"Llava{stem}Model", (LlavaDecoderModel, family.model), config_class=config)
    causal_lm = _subclass(f"Llava{stem}ForCausalLM", (LlavaCausalLM, family.causal_lm), config_class=config,
                          inner_model_class=model)
    proxyv_config = strict(_subclass(f"LlavaProxyV{stem}Config", (ProxyVConfigFields, config),
                                     model_type=family.proxyv_model_type,
                                     release_learned_proxy_guidance=family.release_learned_proxy_guidance))
    proxyv_layer = _subclass(f"ProxyV{stem}DecoderLayer", (ProxyVLayerMixin, family.decoder_layer),
                             projection=family.projection)
    proxyv_model = _subclass(f"LlavaProxyV{stem}Model", (ProxyVDecoderModel, model), config_class=proxyv_config,
                             proxyv_layer_class=proxyv_layer)
    proxyv_causal_lm = _subclass(f"LlavaProxyV{stem}ForCausalLM", (ProxyVCausalLM, causal_lm),
                                 config_class=proxyv_config, inner_model_class=proxyv_model)
    pyramid_drop_model = _subclass(f"LlavaPyramidDrop{stem}Model", (PyramidDropDecoderModel, model),
                                   projection=family.projection)
    pyramid_drop_causal_lm = _subclass(f"LlavaPyramidDrop{stem}ForCausalLM", (PyramidDropCausalLM, causal_lm),
                                       inner_model_class=pyramid_drop_model)
    classes = FamilyClasses(family, config, model, causal_lm, proxyv_config, proxyv_layer, proxyv_model,
                            proxyv_causal_lm, pyramid_drop_model, pyramid_drop_causal_lm)
    for made in (config, model, causal_lm, proxyv_config, proxyv_layer, proxyv_model, proxyv_causal_lm,
                 pyramid_drop_model, pyramid_drop_causal_lm):
        globals()[made.__name__] = made  # importable by name, as `__qualname__` says
    AutoConfig.register(family.baseline_model_type, config)
    AutoConfig.register(family.proxyv_model_type, proxyv_config)
    AutoModelForCausalLM.register(config, causal_lm)
    AutoModelForCausalLM.register(proxyv_config, proxyv_causal_lm)
    for lm_class in classes.causal_lm_classes:
        register_release_weight_names(lm_class.__name__)
    return classes


_SEPARATE = SeparateProjections()

FAMILIES: dict[str, FamilyClasses] = {
    family.name: build_family(family)
    for family in (
        DecoderFamily("llama", "Llama", ("llama",), "llava_llama", "llava_proxyv_llama",
                      LlamaConfig, LlamaModel, LlamaForCausalLM, LlamaDecoderLayer, _SEPARATE,
                      legacy_model_types=("llava",)),
        DecoderFamily("mistral", "Mistral", ("mistral",), "llava_mistral", "llava_proxyv_mistral",
                      MistralConfig, MistralModel, MistralForCausalLM, MistralDecoderLayer, _SEPARATE),
        DecoderFamily("qwen2", "Qwen", ("qwen2",), "llava_qwen", "llava_proxyv_qwen",
                      Qwen2Config, Qwen2Model, Qwen2ForCausalLM, Qwen2DecoderLayer, _SEPARATE),
        DecoderFamily("qwen3", "Qwen3", ("qwen3",), "llava_qwen3", "llava_proxyv_qwen3",
                      Qwen3Config, Qwen3Model, Qwen3ForCausalLM, Qwen3DecoderLayer, QKNormProjections()),
        DecoderFamily("phi3", "Phi", ("phi3",), "llava_phi", "llava_proxyv_phi",
                      Phi3Config, Phi3Model, Phi3ForCausalLM, Phi3DecoderLayer, FusedQKVProjection(),
                      release_learned_proxy_guidance="spatial"),
    )
}


def family_for_llm(model_type: str) -> FamilyClasses:
    """The family that builds a LLaVA model from a plain LLM of `model_type` (e.g. "qwen2")."""
    for classes in FAMILIES.values():
        if model_type in classes.family.llm_model_types:
            return classes
    known = sorted(t for classes in FAMILIES.values() for t in classes.family.llm_model_types)
    raise ValueError(f"Language models of model_type '{model_type}' are not supported. Supported: {', '.join(known)} "
                     "(InternLM2 / InternLM2.5: convert with python -m llava.tools.convert_internlm2 first).")


def family_for_model_type(model_type: str) -> FamilyClasses | None:
    """The family whose LLaVA checkpoints carry `model_type` (baseline or ProxyV), or None."""
    for classes in FAMILIES.values():
        family = classes.family
        if model_type in (family.baseline_model_type, family.proxyv_model_type, *family.legacy_model_types):
            return classes
    return None


LLAMA = FAMILIES["llama"]
# The Llama family's classes under the names this package has always exported (the others are
# importable from here by their generated names, e.g. LlavaProxyVQwenForCausalLM).
LlavaConfig = LLAMA.config
LlavaProxyVConfig = LLAMA.proxyv_config
LlavaLlamaModel = LLAMA.model
LlavaLlamaForCausalLM = LLAMA.causal_lm
LlavaProxyVLlamaModel = LLAMA.proxyv_model
LlavaProxyVLlamaForCausalLM = LLAMA.proxyv_causal_lm
LlavaPyramidDropLlamaForCausalLM = LLAMA.pyramid_drop_causal_lm
ProxyVDecoderLayer = LLAMA.proxyv_layer
