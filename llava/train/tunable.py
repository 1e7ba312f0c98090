"""Which parameters a training stage updates (`--mm_tunable_parts`), logged part by part."""

import logging

from llava.model.checkpoint_names import (
    LANGUAGE_MODEL_PREFIXES,
    PROJECTOR_PREFIXES,
    PROXYV_MODULE_PREFIXES,
    TOWER_PREFIXES,
)

logger = logging.getLogger(__name__)

TUNABLE_PARTS = {
    "mm_mlp_adapter": PROJECTOR_PREFIXES,
    "mm_vision_mlp": PROXYV_MODULE_PREFIXES,
    "mm_language_model": LANGUAGE_MODEL_PREFIXES,
    "mm_vision_tower": TOWER_PREFIXES,
}
DEFAULT_TUNABLE_PARTS = "mm_mlp_adapter,mm_vision_mlp,mm_language_model"
MULTIMODAL_ONLY = {"mm_mlp_adapter", "mm_vision_mlp"}


def parse_tunable_parts(text: str | None) -> list[str]:
    parts = [p.strip() for p in (text or DEFAULT_TUNABLE_PARTS).split(",") if p.strip()]
    unknown = [p for p in parts if p not in TUNABLE_PARTS]
    if unknown or not parts:
        raise ValueError(f"Unknown --mm_tunable_parts {unknown or text!r}. Known: {', '.join(TUNABLE_PARTS)}.")
    return parts


def trains_multimodal_only(parts: list[str]) -> bool:
    """Stage 1: only the projector (and ProxyV's modules) learn; they alone are saved."""
    return set(parts) <= MULTIMODAL_ONLY


def multimodal_prefixes(parts: list[str]) -> tuple[str, ...]:
    return tuple(prefix for part in parts for prefix in TUNABLE_PARTS[part])


def apply_tunable_parts(model, parts: list[str], adapters: set[str] | None = None) -> None:
    """Freeze everything, then unfreeze `parts`; log what each part holds and whether it trains.

    `adapters`: with LoRA, the names of the parameters PEFT trains (the adapters, and biases as
    `--lora_bias` says); the language model part then trains them, not its own weights.
    """
    adapters = adapters or set()
    model.requires_grad_(False)
    for part, prefixes in TUNABLE_PARTS.items():
        params = [p for name, p in model.named_parameters() if name.startswith(prefixes) and name not in adapters]
        count = sum(getattr(p, "ds_numel", p.numel()) for p in params)
        trains = part in parts and not (adapters and part == "mm_language_model")
        if trains:
            for param in params:
                param.requires_grad_(True)
        if params:
            logger.info("%-18s %12s parameters  %s", part, f"{count:,}", "TRAINED" if trains else "frozen")
    if adapters:
        adapter_params = [p for name, p in model.named_parameters() if name in adapters]
        for param in adapter_params:
            param.requires_grad_(True)
        count = sum(getattr(p, "ds_numel", p.numel()) for p in adapter_params)
        logger.info("%-18s %12s parameters  %s", "LoRA adapters", f"{count:,}", "TRAINED")
