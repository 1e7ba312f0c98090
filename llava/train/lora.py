"""LoRA / QLoRA fine-tuning with PEFT, as LLaVA runs it (`--lora_enable`, `--bits`).

Adapters go on the language model's linear layers only: every `nn.Linear` inside the decoder layers
(`q_proj`, ..., Phi-3's fused `qkv_proj` / `gate_up_proj`), named in full so that the vision
tower's own `q_proj`s never match. The projector, the image newline and ProxyV's guided-update
modules are not adapted: they train fully when their `--mm_tunable_parts` part says so, and the
language model part (`mm_language_model`) means its adapters.

A LoRA output folder holds, as LLaVA's does: `adapter_config.json` + `adapter_model.safetensors`
(PEFT's), `non_lora_trainables.bin` (the projector, newline and ProxyV modules, plus whatever else
trained fully, under the plain model's parameter names), and the LLaVA `config.json`.
`llava.model.builder.load_pretrained_model(lora_dir, model_base)` loads and merges them.
"""

import logging
import os

import torch
from torch import nn

from llava.errors import UsageError
from llava.model.checkpoint_names import DECODER_LAYERS_PREFIX, NEW_MODULE_PREFIXES, TOWER_PREFIXES
from llava.model.lora_weights import NON_LORA_FILE, is_lora_parameter, plain_name
from llava.model.zero3_params import full_state
from llava.train.tunable import apply_tunable_parts

logger = logging.getLogger(__name__)


def lora_target_modules(model) -> list[str]:
    """Full names of the `nn.Linear` layers inside the decoder layers: what LoRA adapts."""
    return sorted(name for name, module in model.named_modules()
                  if isinstance(module, nn.Linear) and name.startswith(DECODER_LAYERS_PREFIX))


def add_lora_adapters(model, training_args):
    """The model wrapped by PEFT with fresh adapters; QLoRA first prepares the quantized model."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if training_args.bits in (4, 8):
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=training_args.gradient_checkpointing)
    targets = lora_target_modules(model)
    lora_config = LoraConfig(r=training_args.lora_r, lora_alpha=training_args.lora_alpha,
                             lora_dropout=training_args.lora_dropout, bias=training_args.lora_bias,
                             target_modules=targets, task_type="CAUSAL_LM")
    logger.info("LoRA r=%d alpha=%g dropout=%g bias=%s on %d linear layers of the language model",
                lora_config.r, lora_config.lora_alpha, lora_config.lora_dropout, lora_config.bias, len(targets))
    peft_model = get_peft_model(model, lora_config)
    if training_args.bits in (4, 8):
        _to_compute_dtype(peft_model, _compute_dtype(training_args))
    return peft_model


def _compute_dtype(training_args) -> torch.dtype:
    return torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32


def _to_compute_dtype(peft_model, dtype: torch.dtype) -> None:
    """QLoRA: PEFT's k-bit preparation leaves every unquantized weight in fp32; as LLaVA does, the
    adapters and the full-precision modules go back to the compute dtype, the norms stay fp32."""
    from peft.tuners.lora import LoraLayer

    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            module.to(dtype)
        elif "norm" in name.rsplit(".", 1)[-1]:
            module.to(torch.float32)
        elif name.rsplit(".", 1)[-1] in QUANTIZATION_SKIP_MODULES + ["embed_tokens"]:
            module.to(dtype)


def non_lora_parameters(base_model) -> dict[str, torch.Tensor]:
    """{plain name: parameter} of what a LoRA run saves beside its adapter: every module the base
    language model does not have (projector, newline, ProxyV modules), and anything else that
    trains fully (e.g. the tower with `mm_vision_tower`)."""
    return {plain_name(name): param for name, param in base_model.named_parameters()
            if not is_lora_parameter(name) and (param.requires_grad or name.startswith(NEW_MODULE_PREFIXES))}


def save_non_lora_trainables(base_model, output_dir: str, should_save: bool) -> None:
    """Write `non_lora_trainables.bin`; every rank calls it (ZeRO-3 gathers), the main one writes."""
    state = full_state(non_lora_parameters(base_model))
    if should_save:
        os.makedirs(output_dir, exist_ok=True)
        torch.save(state, os.path.join(output_dir, NON_LORA_FILE))
        logger.info("Saved %d non-LoRA weights to %s", len(state), os.path.join(output_dir, NON_LORA_FILE))


def adapter_parameter_names(base_model) -> set[str]:
    """What PEFT made trainable inside the decoder layers: the adapters, and biases per `--lora_bias`
    (PEFT's `bias="all"` would also take the tower's and projector's biases; those follow their parts)."""
    return {name for name, param in base_model.named_parameters()
            if param.requires_grad and (is_lora_parameter(name) or name.startswith(DECODER_LAYERS_PREFIX))}


def enable_lora(model, training_args, parts: list[str]):
    """Wrap `model` for LoRA and set what trains: the adapters for the language model part, the
    other `--mm_tunable_parts` fully. Returns the PEFT model."""
    if "mm_language_model" not in parts:
        raise UsageError("--lora_enable trains the language model through adapters, but --mm_tunable_parts "
                         f"{','.join(parts)} leaves it out; add mm_language_model, or drop --lora_enable.")
    peft_model = add_lora_adapters(model, training_args)
    base_model = peft_model.get_base_model()
    apply_tunable_parts(base_model, parts, adapters=adapter_parameter_names(base_model))
    return peft_model


# Modules QLoRA leaves unquantized: everything outside the language model's decoder layers.
QUANTIZATION_SKIP_MODULES = [prefix.split(".")[1] for prefix in TOWER_PREFIXES + NEW_MODULE_PREFIXES] + ["lm_head"]


def quantization_config(training_args, compute_dtype: torch.dtype):
    """bitsandbytes settings for `--bits 4/8` (QLoRA, as LLaVA sets them), or None for `--bits 16`."""
    if training_args.bits == 16:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=training_args.bits == 4, load_in_8bit=training_args.bits == 8,
                              llm_int8_skip_modules=QUANTIZATION_SKIP_MODULES, llm_int8_threshold=6.0,
                              bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_use_double_quant=True,
                              bnb_4bit_quant_type="nf4")
