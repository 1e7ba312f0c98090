"""Validation of the token-reduction options a LLaVA config carries (VisionZip, PyramidDrop).

Old configs have none of the fields and keep their defaults (no reduction). Combinations:
* VisionZip + ProxyV needs non-spatial proxies (`learn_proxy`): spatial proxies pool a g x g grid,
  which VisionZip's 400 selected tokens no longer form.
* PyramidDrop + ProxyV is rejected (README, "Study variants and token-reduction baselines").
"""

from ..proxyv.variants import decoder_variant
from .visionzip import VISION_TOKEN_REDUCTIONS


def check_reduction_options(config) -> None:
    """Raise a ValueError naming the option and the fix for any invalid or unsupported setting."""
    reduction = config.vision_token_reduction
    if reduction is not None and reduction not in VISION_TOKEN_REDUCTIONS:
        raise ValueError(f"Unknown vision_token_reduction '{reduction}'. Known: {', '.join(VISION_TOKEN_REDUCTIONS)} "
                         "(or None for no reduction).")
    if config.visionzip_dominant < 1 or config.visionzip_contextual < 0:
        raise ValueError(f"visionzip_dominant must be >= 1 and visionzip_contextual >= 0, got "
                         f"{config.visionzip_dominant} and {config.visionzip_contextual}.")
    is_proxyv = bool(getattr(config, "proxyv", None))
    study_variant = getattr(config, "proxyv_variant", "proxyv")
    if reduction == "visionzip" and is_proxyv and not decoder_variant(study_variant).makes_proxies:
        raise ValueError(f"VisionZip is combined with ProxyV itself (learn_proxy=True), not with the study variant "
                         f"'{study_variant}'; drop vision_token_reduction or use proxyv_variant 'proxyv'.")
    if reduction == "visionzip" and is_proxyv and not getattr(config, "learn_proxy", False):
        raise ValueError("VisionZip with ProxyV needs non-spatial proxies: set learn_proxy=True (--learn_proxy True); "
                         "spatial proxies pool the g x g grid that VisionZip's selected tokens no longer form.")
    if reduction == "visionzip" and getattr(config, "learned_proxy_guidance", None) == "spatial":
        raise ValueError("VisionZip with ProxyV needs the learned assignment in the guided update; "
                         "learned_proxy_guidance 'spatial' (the authors' Phi-3 release) copies proxies to grid blocks "
                         "that VisionZip's selected tokens no longer form. Drop vision_token_reduction.")
    _check_pyramid_drop(config, is_proxyv)


def _check_pyramid_drop(config, is_proxyv: bool) -> None:
    layers, ratio = config.pyramid_drop_layers, config.pyramid_drop_ratio
    if not 0 < ratio <= 1:
        raise ValueError(f"pyramid_drop_ratio must be in (0, 1], got {ratio}.")
    if layers is None:
        return
    depth = config.num_hidden_layers
    valid = all(isinstance(layer, int) and not isinstance(layer, bool) for layer in layers)
    if not layers or not valid or sorted(set(layers)) != list(layers) or not 1 <= layers[0] <= layers[-1] < depth:
        raise ValueError(f"pyramid_drop_layers must be a non-empty increasing list of layer counts in [1, {depth - 1}] "
                         f"(vision tokens are dropped after that many layers), got {layers}; e.g. [12, 20, 26] for 32.")
    if is_proxyv:
        raise ValueError("PyramidDrop is not combined with ProxyV (see README): drop pyramid_drop_layers or use the "
                         "baseline model.")
