"""The paper's Section 3 study variants of the decoder (docs/design.md §4.8).

From layer `s = proxyv_start_layer`, selected by `LlavaProxyVConfig.proxyv_variant`:
* `mask_vision_attention`: training-free; ordinary layers whose mask hides vision keys from vision
  queries. A vision query keeps its own key (the diagonal), so its softmax row is never empty; it
  also sees every earlier text/newline token, exactly as in the baseline. No new weights.
* `skip_vision_attention`: vision tokens are not queries (no attention update) but go through the
  layer's FFN; they stay keys/values for the text (a ProxyV layer with zero proxies).
* `vision_mlp`: attention and FFN both skipped for vision tokens, replaced by a per-layer
  `UnguidedVisionMLP` (a ProxyV layer with zero proxies and no guidance).
The masking ratio `q` (`vision_mask_ratio`) masks the top round(q*L) layers (half rounds up):
s = L - round(q*L).
"""

import math
from dataclasses import replace

from ..layout import TOKEN_VISION, MultimodalLayout
from ..masks import MaskRule, position_causal_rule


def start_layer_for_mask_ratio(ratio: float, num_layers: int) -> int:
    """s = L - round(q * L) with half rounded up, so q = 0 masks nothing and q = 1 masks every layer."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"vision_mask_ratio must be in [0, 1] (the fraction of layers masked), got {ratio}.")
    return num_layers - math.floor(ratio * num_layers + 0.5)


def vision_masked_rule(layout: MultimodalLayout) -> MaskRule:
    """The baseline's visibility (causal by position over real keys) minus vision-to-vision pairs
    other than the diagonal."""
    causal = position_causal_rule(layout.position_ids, layout.attention_mask)
    is_vision = layout.token_kind == TOKEN_VISION  # [B, T]

    def visible(b, q, kv):
        return causal.visible(b, q, kv) & ~(is_vision[b, q] & is_vision[b, kv] & (q != kv))

    return replace(causal, visible=visible)
