"""The ProxyV plan: every index, position and mask the ProxyV layers need, built once per forward.

Streams (docs/design.md §4.4, §4.7), for a batch laid out by `MultimodalLayout`:
* the natural sequence `X` [B, T, D] keeps every token in place (vision, newline, text, padding);
* the light stream is the non-vision tokens of `X` (gathered into [B, Tl] slots) plus the proxies
  [B, P] (crop k of a sample owns proxy slots k*n .. k*n+n-1);
* the full stream is the vision tokens of `X`, read crop by crop as [N, g*g].
Queries are light slots then proxy slots; keys are the natural sequence then the proxy slots.
"""

from dataclasses import dataclass

import torch

from ..layout import TOKEN_PAD, TOKEN_VISION, MultimodalLayout
from ..masks import BlockMask, MaskRule, render_mask


@dataclass
class ProxyVPlan:
    light_batch: torch.Tensor  # [M] sample of every real light slot (flat list)
    light_token: torch.Tensor  # [M] its index in the natural sequence
    light_slot: torch.Tensor  # [M] its slot in the light stream
    num_light_slots: int  # Tl
    proxy_batch: torch.Tensor  # [N, 1] sample of each crop's proxies
    proxy_slot: torch.Tensor  # [N, n] slot of each proxy in the proxy stream
    num_proxy_slots: int  # P
    full_batch: torch.Tensor  # [N, 1]
    full_token: torch.Tensor  # [N, G] natural index of every full vision token
    query_positions: torch.Tensor  # [B, Tl + P]
    key_positions: torch.Tensor  # [B, T + P]
    attention_mask: torch.Tensor | BlockMask  # [B, 1, Tl + P, T + P] additive float, or flex's block mask

    def gather_light(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> light slots [B, Tl, D] (unused slots are zero)."""
        light = hidden.new_zeros(hidden.shape[0], self.num_light_slots, hidden.shape[-1])
        return light.index_put((self.light_batch, self.light_slot), hidden[self.light_batch, self.light_token])

    def scatter_light(self, hidden: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
        """Write the light slots [B, Tl, D] back into their natural places in [B, T, D]."""
        return hidden.index_put((self.light_batch, self.light_token), light[self.light_batch, self.light_slot])

    def gather_full(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> full stream [N, G, D]."""
        return hidden[self.full_batch, self.full_token]

    def scatter_full(self, hidden: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        return hidden.index_put((self.full_batch.expand_as(self.full_token), self.full_token), full)

    def arrange_proxies(self, proxies: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Per-crop proxies [N, n, D] -> proxy stream [B, P, D]."""
        stream = proxies.new_zeros(batch_size, self.num_proxy_slots, proxies.shape[-1])
        return stream.index_put((self.proxy_batch.expand_as(self.proxy_slot), self.proxy_slot), proxies)

    def crop_proxies(self, stream: torch.Tensor) -> torch.Tensor:
        """Proxy stream [B, P, D] -> per-crop proxies [N, n, D]."""
        return stream[self.proxy_batch, self.proxy_slot]


def _light_slots(layout: MultimodalLayout):
    """Flat (sample, natural index, slot) of every non-vision token; padding slots included."""
    is_light = layout.token_kind != TOKEN_VISION  # [B, T]
    slot_of = is_light.long().cumsum(dim=1) - 1  # [B, T]
    light_batch, light_token = is_light.nonzero(as_tuple=True)
    light_slot = slot_of[light_batch, light_token]
    num_slots = int(is_light.sum(dim=1).max())
    return light_batch, light_token, light_slot, num_slots


def _proxy_slots(layout: MultimodalLayout, num_proxies: int, batch_size: int):
    """Slot and position of every proxy; crops keep batch order, so slot = crop rank in its sample."""
    crop_batch = layout.crop_batch
    crops_per_sample = torch.bincount(crop_batch, minlength=batch_size)  # [B]
    first_crop = crops_per_sample.cumsum(0) - crops_per_sample  # [B]
    crop_rank = torch.arange(crop_batch.numel(), device=crop_batch.device) - first_crop[crop_batch]  # [N]
    offsets = torch.arange(num_proxies, device=crop_batch.device)
    proxy_slot = crop_rank[:, None] * num_proxies + offsets  # [N, n]
    proxy_position = (layout.crop_image_start + layout.crop_index * num_proxies)[:, None] + offsets  # [N, n]
    num_slots = int(crops_per_sample.max()) * num_proxies if crop_batch.numel() else 0
    return proxy_slot, proxy_position, num_slots


def build_proxyv_plan(layout: MultimodalLayout, num_proxies: int, dtype: torch.dtype, backend: str = "sdpa") -> ProxyVPlan:
    """Indices, positions and the ProxyV attention mask for `layout`, with `n = num_proxies` per crop;
    the mask as attention backend `backend` takes it (`llava.model.masks.render_mask`)."""
    batch_size, _ = layout.token_kind.shape
    device = layout.token_kind.device
    light_batch, light_token, light_slot, num_light = _light_slots(layout)
    proxy_slot, proxy_position, num_proxy = _proxy_slots(layout, num_proxies, batch_size)
    proxy_batch = layout.crop_batch[:, None]

    # Per-slot facts of the light stream and the proxy stream.
    light_position = torch.zeros(batch_size, num_light, dtype=torch.long, device=device)
    light_position[light_batch, light_slot] = layout.position_ids[light_batch, light_token]
    light_token_of_slot = torch.zeros_like(light_position)
    light_token_of_slot[light_batch, light_slot] = light_token
    light_valid = torch.zeros(batch_size, num_light, dtype=torch.bool, device=device)
    light_valid[light_batch, light_slot] = layout.token_kind[light_batch, light_token] != TOKEN_PAD
    stream_position = torch.zeros(batch_size, num_proxy, dtype=torch.long, device=device)
    stream_position[proxy_batch.expand_as(proxy_slot), proxy_slot] = proxy_position
    proxy_valid = torch.zeros(batch_size, num_proxy, dtype=torch.bool, device=device)
    proxy_valid[proxy_batch.expand_as(proxy_slot), proxy_slot] = True

    query_positions = torch.cat([light_position, stream_position], dim=1)  # [B, Tl + P]
    key_positions = torch.cat([layout.position_ids, stream_position], dim=1)  # [B, T + P]
    seq_len = layout.token_kind.shape[1]
    # Unused slots (padding, missing proxies) see themselves only, so no softmax row is empty.
    self_key = torch.cat([light_token_of_slot, seq_len + torch.arange(num_proxy, device=device).expand(batch_size, -1)], 1)
    rule = _proxyv_rule(layout, query_positions, key_positions, torch.cat([light_valid, proxy_valid], dim=1),
                        self_key, proxy_valid, num_light)
    return ProxyVPlan(
        light_batch=light_batch,
        light_token=light_token,
        light_slot=light_slot,
        num_light_slots=num_light,
        proxy_batch=proxy_batch,
        proxy_slot=proxy_slot,
        num_proxy_slots=num_proxy,
        full_batch=layout.crop_batch[:, None],
        full_token=layout.vision_token_index(),
        query_positions=query_positions,
        key_positions=key_positions,
        attention_mask=render_mask(rule, backend, dtype),
    )


def _proxyv_rule(layout, query_positions, key_positions, query_valid, self_key, proxy_valid, num_light) -> MaskRule:
    """Who sees whom among queries [B, Tl + P] and keys [B, T + P], docs/design.md §4.4 step 2.

    Causality by position and real keys only; light queries (text, newlines) see the natural
    sequence but no proxy; proxy queries see proxies and non-vision tokens but no full token. An
    unused query slot (`query_valid` False) sees only its own key `self_key`.
    """
    key_real = torch.cat([layout.attention_mask.bool(), proxy_valid], dim=1)  # [B, T + P]
    key_is_vision = torch.cat([layout.token_kind == TOKEN_VISION, torch.zeros_like(proxy_valid)], dim=1)  # [B, T + P]
    key_is_proxy = torch.cat([torch.zeros_like(layout.token_kind, dtype=torch.bool), proxy_valid.new_ones(
        proxy_valid.shape)], dim=1)  # [B, T + P]
    query_is_proxy = torch.cat([torch.zeros_like(query_valid[:, :num_light]), torch.ones_like(query_valid[:, num_light:])],
                               dim=1)  # [B, Tl + P]
    # Only tensors, no Python numbers, are read: a compiled flex kernel or block-mask builder would
    # specialise on a number and recompile for every new prompt length.

    def visible(b, q, kv):
        causal = key_positions[b, kv] <= query_positions[b, q]
        allowed = torch.where(query_is_proxy[b, q], ~key_is_vision[b, kv], ~key_is_proxy[b, kv])  # proxy: no full token
        seen = causal & allowed & key_real[b, kv]
        return torch.where(query_valid[b, q], seen, kv == self_key[b, q])

    batch_size, num_queries = query_positions.shape
    return MaskRule(batch_size, num_queries, key_positions.shape[1], visible, query_positions.device)
