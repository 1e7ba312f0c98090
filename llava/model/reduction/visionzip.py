"""VisionZip (docs/design.md §4.9): per crop, `dominant` tokens the CLS token attends to most plus
`contextual` tokens merged from the rest, computed inside the vision tower.

* The CLS attention and the keys are those of the encoder layer whose output is the selected
  feature layer (`mm_vision_select_layer`). We recompute that layer's attention for the CLS query
  from its own `layer_norm1`, `q_proj` and `k_proj` on the hidden states entering it, so it works
  with every attention backend (eager, sdpa, flash; sdpa under flex) and never asks the tower for attention maps.
* Dominant: the `dominant` patches with the largest CLS attention summed over heads.
* Contextual: the other patches, in raster order; `contextual` targets evenly spaced among them;
  every non-target goes to the target whose key (mean over heads) is most cosine-similar; each
  contextual token is its target plus the mean of the tokens assigned to it (as the VisionZip
  release computes it; a target with none assigned stays as it is).
* Output order per crop: dominant tokens in raster order, then the contextual tokens in target order.

Every step is a tensor op (topk, argsort, gather, scatter), so FLOPs can be counted on meta.
"""

import torch
import torch.nn.functional as F

VISION_TOKEN_REDUCTIONS = ("visionzip",)


def check_visionzip_counts(dominant: int, contextual: int, num_patches: int) -> None:
    """Counts must fit the crop: 1 <= dominant, 0 <= contextual, dominant + contextual <= patches."""
    if dominant < 1 or contextual < 0:
        raise ValueError(f"visionzip_dominant must be >= 1 and visionzip_contextual >= 0, got {dominant}, {contextual}.")
    if dominant + contextual > num_patches:
        raise ValueError(
            f"visionzip_dominant + visionzip_contextual = {dominant + contextual} exceeds the {num_patches} patches "
            f"of a crop of this vision tower; lower them (the paper keeps 360 + 40 of 576)."
        )


def cls_attention_and_keys(layer, entering: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS -> patch attention summed over heads [N, G], and patch keys averaged over heads [N, G, hd].

    layer: a CLIP encoder layer; entering: [N, 1+G, d_vis] the hidden states it receives.
    """
    attn = layer.self_attn
    normed = layer.layer_norm1(entering)  # [N, 1+G, d]
    batch, length, _ = normed.shape
    query = attn.q_proj(normed[:, :1]).view(batch, 1, attn.num_heads, attn.head_dim).transpose(1, 2)  # [N, H, 1, hd]
    keys = attn.k_proj(normed).view(batch, length, attn.num_heads, attn.head_dim).transpose(1, 2)  # [N, H, 1+G, hd]
    scores = (query @ keys.transpose(-1, -2)).float() * attn.scale  # [N, H, 1, 1+G], float: no bf16 rank ties
    probs = torch.softmax(scores, dim=-1)
    cls_attention = probs[:, :, 0, 1:].sum(dim=1)  # [N, G]
    return cls_attention, keys[:, :, 1:].mean(dim=1)  # [N, G], [N, G, hd]


def visionzip_select(features: torch.Tensor, cls_attention: torch.Tensor, keys: torch.Tensor,
                     dominant: int, contextual: int) -> torch.Tensor:
    """[N, G, d] patch features -> [N, dominant + contextual, d] (order: see the module docstring)."""
    num_crops, num_patches, dim = features.shape
    check_visionzip_counts(dominant, contextual, num_patches)
    top = cls_attention.topk(dominant, dim=1).indices  # [N, dominant]
    is_dominant = torch.zeros_like(cls_attention, dtype=torch.long).scatter(1, top, 1)  # [N, G]
    # Stable argsort on the 0/1 flag: the rest in raster order, then the dominant ones in raster order.
    order = torch.argsort(is_dominant, dim=1, stable=True)  # [N, G]
    rest, kept = order[:, : num_patches - dominant], order[:, num_patches - dominant :]
    dominant_tokens = features.gather(1, kept[..., None].expand(-1, -1, dim))  # [N, dominant, d]
    if contextual == 0:
        return dominant_tokens
    return torch.cat([dominant_tokens, _contextual_tokens(features, keys, rest, contextual)], dim=1)


def _contextual_tokens(features, keys, rest, contextual) -> torch.Tensor:
    """Merge the non-dominant tokens `rest` [N, R] into `contextual` tokens [N, contextual, d]."""
    num_rest, dim = rest.shape[1], features.shape[-1]
    step = num_rest // contextual
    target_slot = torch.arange(contextual, device=rest.device) * step  # evenly spaced among the rest
    is_target = torch.zeros(num_rest, dtype=torch.long, device=rest.device).index_fill(0, target_slot, 1)
    other_slot = torch.argsort(is_target, stable=True)[: num_rest - contextual]  # [R - c]
    rest_features = features.gather(1, rest[..., None].expand(-1, -1, dim))  # [N, R, d]
    rest_keys = F.normalize(keys.gather(1, rest[..., None].expand(-1, -1, keys.shape[-1])), dim=-1)  # [N, R, hd]
    similarity = rest_keys[:, other_slot] @ rest_keys[:, target_slot].transpose(1, 2)  # [N, R - c, c]
    assigned = similarity.argmax(dim=-1)  # [N, R - c]
    targets = rest_features[:, target_slot]  # [N, c, d]
    sums = torch.zeros_like(targets).scatter_add(1, assigned[..., None].expand(-1, -1, dim), rest_features[:, other_slot])
    counts = torch.zeros(assigned.shape[0], contextual, device=rest.device, dtype=features.dtype)
    counts = counts.scatter_add(1, assigned, torch.ones_like(assigned, dtype=features.dtype)).clamp(min=1)  # [N, c]
    return targets + sums / counts[..., None]  # as VisionZip's release: target + mean of its assigned tokens
