"""The ProxyV decoder layer: a Llama decoder layer that, given a `ProxyVPlan`, runs on two streams.

Without a plan (decoding steps, text-only batches) it is the ordinary Llama layer. With one it
does DESIGN.md section 4 steps 1-5: RMSNorm on both streams; attention whose queries are the
light stream (text, newlines, proxies) and whose keys/values are the full tokens as they enter
the layer plus the light stream; residual + FFN on the light stream only; the guided update of the
full stream by this layer's `VisionMLP`. The study variants `skip_vision_attention` (zero proxies,
the full stream goes through the layer's FFN) and `vision_mlp` (zero proxies, an unguided MLP) run
the same forward with a different full-stream update. The KV cache receives the natural sequence's keys and
values (never the proxies), so decoding afterwards is ordinary attention.
"""

import logging

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, eager_attention_forward, rotate_half

from .modules import UnguidedVisionMLP, VisionMLP, proxy_guidance
from .plan import ProxyVPlan

logger = logging.getLogger(__name__)
_warned_flash = False


def _attention_interface(config):
    """eager or sdpa as configured; flash-attention cannot take ProxyV's mask, so sdpa stands in."""
    global _warned_flash
    name = config._attn_implementation
    if name == "flash_attention_2":
        if not _warned_flash:
            logger.warning("ProxyV layers need an arbitrary mask that flash-attention cannot take; they use sdpa.")
            _warned_flash = True
        name = "sdpa"
    return ALL_ATTENTION_FUNCTIONS.get_interface(name, eager_attention_forward)


def _rotate(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on [B, H, S, hd] with per-token cos/sin [B, S, hd]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return states * cos + rotate_half(states) * sin


class ProxyVDecoderLayer(LlamaDecoderLayer):
    """Llama decoder layer with the two-stream ProxyV forward."""

    def forward(self, hidden_states, proxy_states=None, assignment=None, proxyv_plan: ProxyVPlan | None = None,
                vision_mlp: VisionMLP | UnguidedVisionMLP | None = None, rotary=None, **kwargs):
        """Ordinary layer when `proxyv_plan` is None; else returns `(hidden [B,T,D], proxies [B,P,D])`.

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
        attn_out = self._attend(normed_light, torch.cat([normed_natural, normed_light[:, plan.num_light_slots :]], 1),
                                plan, rotary, past_key_values, hidden.shape[1])
        light = light_in + attn_out
        light = light + self.mlp(self.post_attention_layernorm(light))  # [B, Tl + P, D]

        new_proxies = light[:, plan.num_light_slots :]  # [B, P, D]
        full = plan.gather_full(hidden)  # [N, G, D] entering this layer
        hidden = plan.scatter_light(hidden, light[:, : plan.num_light_slots])
        hidden = plan.scatter_full(hidden, self._update_full(full, new_proxies, assignment, plan, vision_mlp))
        return hidden, new_proxies

    def _update_full(self, full, new_proxies, assignment, plan, vision_mlp):
        """The full stream's update, [N, G, D] -> [N, G, D]: ProxyV's guided `VisionMLP` (step 4); the
        study variants' `UnguidedVisionMLP`; or, with no module (`skip_vision_attention`), this layer's
        own FFN with its residual, as if the attention had added nothing."""
        if vision_mlp is None:
            return full + self.mlp(self.post_attention_layernorm(full))
        if isinstance(vision_mlp, UnguidedVisionMLP):
            return vision_mlp(full)
        config = self.self_attn.config
        context = vision_mlp.context_proj(plan.crop_proxies(new_proxies))  # [N, n, d_m]
        guidance = proxy_guidance(context, assignment, config.proxy_grid_size, config.proxyv_reduce_factor)
        if full.shape[0] == 0:  # a text-only training batch: no crops, empty tensors of mismatched widths
            guidance = guidance[:, : full.shape[1]]
        return vision_mlp(full, guidance)

    def _attend(self, query_in, key_in, plan, rotary, past_key_values, seq_len):
        """Attention of light+proxy queries over natural+proxy keys; caches the natural keys/values."""
        attn = self.self_attn
        q_shape = (*query_in.shape[:-1], -1, attn.head_dim)
        k_shape = (*key_in.shape[:-1], -1, attn.head_dim)
        query = attn.q_proj(query_in).view(q_shape).transpose(1, 2)  # [B, H, Q, hd]
        key = attn.k_proj(key_in).view(k_shape).transpose(1, 2)  # [B, Hkv, K, hd]
        value = attn.v_proj(key_in).view(k_shape).transpose(1, 2)
        q_cos, q_sin = rotary(query_in, plan.query_positions)
        k_cos, k_sin = rotary(key_in, plan.key_positions)
        query, key = _rotate(query, q_cos, q_sin), _rotate(key, k_cos, k_sin)
        if past_key_values is not None:
            past_key_values.update(key[:, :, :seq_len], value[:, :, :seq_len], attn.layer_idx)
        output, _ = _attention_interface(attn.config)(
            attn, query, key, value, plan.attention_mask,
            dropout=0.0 if not self.training else attn.attention_dropout, scaling=attn.scaling,
        )
        return attn.o_proj(output.reshape(*query_in.shape[:-1], -1).contiguous())
