"""PyramidDrop (docs/design.md §4.9): keep `ratio` of the remaining vision tokens after the first
`l` layers for each `l` of `pyramid_drop_layers` (the paper's 12, 20, 26 of 32), ranked by the
attention the last instruction token pays them.

The decoder runs in *stages*: stage 0 is the whole sequence; from layer `l_k` (0-based, the k-th
listed value) on, the sequence is packed to its non-vision tokens plus the kept vision tokens, in their original order,
each keeping its original RoPE position. A `StageState` says, for every slot of a stage, which
original token it holds and whether it is real. Ranking recomputes layer `l_k`'s attention for the
one instruction query from its q/k projections on the hidden states entering it (as PyramidDrop's
code does; any attention backend), averaged over heads.

Kept counts per sample are `floor(count * ratio)` at each drop; they depend on the layout only, so
`drop_schedule` can be built on CPU and the rest runs on meta for FLOP counting.
"""

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..attention import HeadProjection, project_heads
from ..layout import TOKEN_PAD, TOKEN_VISION
from ..masks import MaskRule, position_causal_rule


@dataclass
class DropSchedule:
    """Kept vision tokens per sample after each drop, and the packed length of every stage."""

    keep_vision: torch.Tensor  # [S-1, B] vision tokens kept by each sample after drop k
    stage_lengths: list[int]  # [S] slots of each stage (stage 0 = the whole sequence)


def drop_schedule(token_kind: torch.Tensor, num_drops: int, ratio: float) -> DropSchedule:
    """The schedule for a batch whose token kinds are `token_kind` [B, T] (needs values: CPU or device)."""
    vision = (token_kind == TOKEN_VISION).sum(dim=1)  # [B]
    other = ((token_kind != TOKEN_VISION) & (token_kind != TOKEN_PAD)).sum(dim=1)  # [B]
    keeps, lengths = [], [token_kind.shape[1]]
    for _ in range(num_drops):
        vision = torch.floor(vision * ratio).long()
        keeps.append(vision)
        lengths.append(int((other + vision).max()))
    return DropSchedule(torch.stack(keeps), lengths)


@dataclass
class StageState:
    """The current stage: slot -> original token, realness, vision flag, position."""

    index: torch.Tensor  # [B, Ts] original sequence index of each slot
    valid: torch.Tensor  # [B, Ts] bool, real token
    is_vision: torch.Tensor  # [B, Ts] bool
    position_ids: torch.Tensor  # [B, Ts]

    def mask_rule(self) -> MaskRule:
        """[B, Ts, Ts]: causality by position over real keys."""
        return position_causal_rule(self.position_ids, self.valid)


def find_instruction_index(attention_mask: torch.Tensor, labels: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    """[B] sequence index of each sample's last instruction token.

    Without labels (generation) it is the last real token; with labels (training) the token just
    before the first supervised one, i.e. the end of the first instruction.
    """
    arange = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last_real = (attention_mask.long() * (arange + 1)).argmax(dim=1)  # [B]
    if labels is None:
        return last_real
    supervised = labels != ignore_index
    first = torch.where(supervised, arange, attention_mask.shape[1]).min(dim=1).values  # [B]
    return torch.where(supervised.any(dim=1), (first - 1).clamp(min=0), last_real)


def instruction_attention(layer, projection: HeadProjection, entering: torch.Tensor, state: StageState,
                          query_slot: torch.Tensor, rotary) -> torch.Tensor:
    """[B, Ts] attention of each sample's instruction token over the stage's tokens, mean over heads.

    Recomputed from `layer`'s q/k (through the family's `projection`) on the hidden states entering
    it, with RoPE at original positions.
    """
    attn = layer.self_attn
    batch = torch.arange(entering.shape[0], device=entering.device)
    normed = layer.input_layernorm(entering)  # [B, Ts, D]
    query_position = state.position_ids[batch, query_slot][:, None]  # [B, 1]
    query_in = normed[batch, query_slot][:, None]  # [B, 1, D]
    query, keys, _ = project_heads(attn, projection, query_in, normed, rotary(query_in, query_position),
                                   rotary(normed, state.position_ids), with_values=False)  # [B, H, 1, hd], [B, Hkv, Ts, hd]
    keys = keys.repeat_interleave(query.shape[1] // keys.shape[1], dim=1)  # [B, H, Ts, hd]
    logits = (query @ keys.transpose(-1, -2)).float() * attn.scaling  # [B, H, 1, Ts]
    visible = state.valid & (state.position_ids <= query_position)  # [B, Ts]
    logits = logits.masked_fill(~visible[:, None, None], torch.finfo(logits.dtype).min)
    return torch.softmax(logits, dim=-1).mean(dim=1)[:, 0]  # [B, Ts]


def keep_mask(scores: torch.Tensor, state: StageState, keep_vision: torch.Tensor) -> torch.Tensor:
    """[B, Ts] bool: every real non-vision token, plus each sample's `keep_vision` top-scored vision tokens."""
    vision = state.is_vision & state.valid
    ranked = scores.masked_fill(~vision, -1.0)  # attention is >= 0, so vision tokens rank first
    order = torch.argsort(ranked, dim=1, descending=True, stable=True)  # [B, Ts]
    slots = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, slots)  # rank of every slot
    return (state.valid & ~state.is_vision) | (vision & (rank < keep_vision[:, None]))


def pack(state: StageState, keep: torch.Tensor, length: int) -> tuple[torch.Tensor, StageState]:
    """Slots of the next stage (`gather` [B, length] into the current one) and its state."""
    slots = torch.arange(keep.shape[1], device=keep.device)
    gather = torch.argsort(torch.where(keep, slots, slots + keep.shape[1]), dim=1)[:, :length]  # kept first, in order
    state = StageState(
        index=state.index.gather(1, gather),
        valid=keep.gather(1, gather),
        is_vision=state.is_vision.gather(1, gather),
        position_ids=state.position_ids.gather(1, gather),
    )
    return gather, state


class PyramidDropCache(DynamicCache):
    """A KV cache whose layers hold different numbers of tokens: `key_valid[k]` [B, K_k] marks the
    real keys of stage k (shared by its layers); decoding steps append their tokens to every stage."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.key_valid: list[torch.Tensor] = []

    def decode_mask_rules(self, num_new: int) -> list[MaskRule]:
        """For `num_new` tokens just appended (`append_tokens`): per stage, each new query sees the
        stage's real keys and the new tokens up to itself ([B, num_new, K_k + num_new])."""
        return [_decode_rule(valid, num_new) for valid in self.key_valid]

    def append_tokens(self, num_new: int) -> None:
        self.key_valid = [torch.cat([m, m.new_ones(m.shape[0], num_new)], dim=1) for m in self.key_valid]

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if tokens_to_remove < 0:
            self.key_valid = [m[:, :tokens_to_remove] for m in self.key_valid]

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.key_valid = [m.repeat_interleave(repeats, dim=0) for m in self.key_valid]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self.key_valid = [m[indices] for m in self.key_valid]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.key_valid = [m.index_select(0, beam_idx.to(m.device)) for m in self.key_valid]


def _decode_rule(key_valid: torch.Tensor, num_new: int) -> MaskRule:
    """Queries are the last `num_new` of the keys marked by `key_valid` [B, K]: real keys, causally."""
    batch_size, num_keys = key_valid.shape
    # The offset is a tensor: a compiled kernel would specialise on a Python number and recompile every step.
    first_new = torch.tensor(num_keys - num_new, device=key_valid.device)

    def visible(b, q, kv):
        return key_valid[b, kv] & (kv <= q + first_new)

    return MaskRule(batch_size, num_new, num_keys, visible, key_valid.device)
