"""The methods the small-scale study compares, each a trained checkpoint plus training-free config changes.

* `baseline` and `proxyv`: the two trained models, run as saved.
* `visionzip`: the baseline with VisionZip at two budgets, the paper's 400 of 576 tokens per crop
  and 192 of 576 (VisionZip's own smaller setting, 162 dominant + 30 contextual), scaled to the
  tower's tokens per crop as the prefill benchmark scales them.
* `pyramiddrop`: the baseline with PyramidDrop after 12, 20, 26 of 32 layers (scaled), keeping half.
* `mask`: the paper's Figure 2 study, training-free on the baseline: from layer s = L - round(q L)
  on, vision tokens stop attending to each other (`mask_vision_attention`), for masked fractions q.

`method_config` builds a method's config from its checkpoint's; `method_prefill_flops` counts its
decoder and whole prefill FLOPs with `llava.eval.flops` for one question's text length and crops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llava.model import family_for_model_type

from .flops import analytic_prefill_flops
from .prefill_benchmark import PYRAMID_DROP_PAPER, pyramid_drop_layers, visionzip_options

VISIONZIP_SMALL = (162, 30, 576)  # VisionZip's 192-token setting
MASK_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Method:
    """One row of the study: `checkpoint` ("baseline" or "proxyv") run with `overrides` on its config."""

    name: str
    kind: str  # baseline, proxyv, visionzip, pyramiddrop, mask
    checkpoint: str
    overrides: dict = field(default_factory=dict)
    masked_fraction: float | None = None  # the mask curve's x (0 for the baseline itself)


def study_methods(num_layers: int, tokens_per_crop: int, mask_fractions=MASK_FRACTIONS) -> list[Method]:
    """Every method for a decoder of `num_layers` layers and a tower of `tokens_per_crop` tokens per crop."""
    methods = [Method("baseline", "baseline", "baseline", masked_fraction=0.0),
               Method("proxyv", "proxyv", "proxyv")]
    for setting in ((360, 40, 576), VISIONZIP_SMALL):
        options = visionzip_options(tokens_per_crop, setting)
        kept = options["visionzip_dominant"] + options["visionzip_contextual"]
        methods.append(Method(f"visionzip {kept}/{tokens_per_crop}", "visionzip", "baseline", options))
    if num_layers >= 2:
        layers = pyramid_drop_layers(num_layers)
        methods.append(Method(f"pyramiddrop {','.join(map(str, layers))}", "pyramiddrop", "baseline",
                              {"pyramid_drop_layers": layers, "pyramid_drop_ratio": PYRAMID_DROP_PAPER[1]}))
    for fraction in mask_fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"masked fractions must be in (0, 1], got {fraction}.")
        methods.append(Method(f"mask q={fraction:g}", "mask", "baseline",
                              {"proxyv_variant": "mask_vision_attention", "vision_mask_ratio": fraction},
                              masked_fraction=fraction))
    return methods


def method_config(checkpoint_config, method: Method):
    """The config `method` runs with: the checkpoint's own, or a copy with its overrides (the ProxyV
    config class of the family for the masked variant, which is a ProxyV study variant)."""
    if not method.overrides:
        return checkpoint_config
    values = {key: value for key, value in checkpoint_config.to_dict().items() if key != "model_type"}
    values.update(method.overrides)
    if method.kind == "mask":
        return family_for_model_type(checkpoint_config.model_type).proxyv_config(**values)
    return type(checkpoint_config)(**values)


def method_prefill_flops(config, text_tokens: int, crops: int) -> dict[str, int]:
    """Prefill FLOPs of one question under `config`: the decoder's (`llm_flops`, what ProxyV and the
    token-reduction methods save) and the whole prefill's (`prefill_flops`: tower, projector, decoder,
    last-token head)."""
    parts = analytic_prefill_flops(config, text_tokens, crops)
    return {"llm_flops": parts["llm_flops"], "prefill_flops": sum(parts.values())}
