"""The ProxyV decoder layer: a family's decoder layer that, given a `ProxyVPlan`, runs on two streams.

Without a plan (decoding steps, text-only batches) it is the family's ordinary layer. With one it
does docs/design.md §4.4 steps 1-5: RMSNorm on both streams; attention whose queries are the
light stream (text, newlines, proxies) and whose keys/values are the full tokens as they enter
the layer plus the light stream; residual + FFN on the light stream only; the guided update of the
full stream by this layer's `VisionMLP`. The study variants `skip_vision_attention` (zero proxies,
the full stream goes through the layer's FFN) and `vision_mlp` (zero proxies, an unguided MLP) run
the same forward with their own full-stream update (`variants.py`). The KV cache receives the natural sequence's keys and
values (never the proxies), so decoding afterwards is ordinary attention.
"""

import torch

from ..attention import HeadProjection, attend
from .modules import UnguidedVisionMLP, VisionMLP
from .plan import ProxyVPlan
from .variants import decoder_variant


class ProxyVLayerMixin:
    """The two-stream ProxyV forward, mixed in front of a family's decoder layer class.

    `projection` is the family's `HeadProjection` (how its attention module makes q/k/v heads).
    """

    projection: HeadProjection

    def forward(self, hidden_states, proxy_states=None, assignment=None, proxyv_plan: ProxyVPlan | None = None,
                vision_mlp: VisionMLP | UnguidedVisionMLP | None = None, rotary=None, **kwargs):
        """Ordinary layer when `proxyv_plan` is None; else returns `(hidden [B,T,D], proxies [B,P,D])`.

        `rotary` is `(query (cos, sin), key (cos, sin))` at the plan's query and key positions,
        computed once per forward by the decoder.

        Tensors that need gradients (hidden states, proxies, the learned assignment A) are
        positional so gradient checkpointing recomputes them correctly.
        """
        if proxyv_plan is None:
            return super().forward(hidden_states, **kwargs)
        return self._proxyv_forward(hidden_states, proxy_states, assignment, proxyv_plan, vision_mlp, rotary,
                                    kwargs.get("past_key_values"))

    def _proxyv_forward(self, hidden, proxies, assignment, plan, vision_mlp, rotary, past_key_values):
        light_in = torch.cat([plan.gather_light(hidden), proxies], dim=1)  # [B, Tl + P, D]
        normed_natural = self.input_layernorm(hidden)  # [B, T, D]: full tokens as they enter
        normed_light = self.input_layernorm(light_in)
        key_in = torch.cat([normed_natural, normed_light[:, plan.num_light_slots :]], 1)  # [B, T + P, D]
        attn_out = attend(self.self_attn, self.projection, normed_light, key_in, *rotary, plan.attention_mask,
                          past_key_values, hidden.shape[1])
        light = light_in + self.projection.after_attention(self, attn_out)
        light = light + self.projection.after_mlp(self, self.mlp(self.post_attention_layernorm(light)))

        new_proxies = light[:, plan.num_light_slots :]  # [B, P, D]
        full = plan.gather_full(hidden)  # [N, G, D] entering this layer
        hidden = plan.scatter_light(hidden, light[:, : plan.num_light_slots])
        update = decoder_variant(self.self_attn.config.proxyv_variant).update_full
        hidden = plan.scatter_full(hidden, update(self, full, new_proxies, assignment, plan, vision_mlp))
        return hidden, new_proxies
