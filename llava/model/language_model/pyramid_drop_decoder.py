"""PyramidDrop on the LLaVA baseline of any family (mixins): the same weights and config (the
family's baseline `model_type` with `pyramid_drop_layers` set), a decoder that drops vision tokens
in stages (`llava.model.reduction.pyramid_drop`).

Prefill runs stage by stage with a position-causal mask over each stage's real tokens; every layer
caches the keys of its own stage, so per-layer cache lengths differ. A `PyramidDropCache` carries
each stage's key validity; decoding steps attend to it with a per-stage mask at the positions the
layout gives. Text-only batches run the plain decoder.
"""

import torch
from transformers.modeling_outputs import BaseModelOutputWithPast

from ...constants import IGNORE_INDEX
from ..attention import HeadProjection
from ..backends import render_layer_mask, require_masks_supported
from ..layout import TOKEN_VISION, MultimodalLayout
from ..reduction.pyramid_drop import (
    DropSchedule,
    PyramidDropCache,
    StageState,
    drop_schedule,
    find_instruction_index,
    instruction_attention,
    keep_mask,
    pack,
)


class PyramidDropDecoderModel:
    """LLaVA decoder that keeps `pyramid_drop_ratio` of the vision tokens after each `pyramid_drop_layers`
    layer (mixed in front of a family's `LlavaDecoderModel`; `projection` is the family's)."""

    projection: HeadProjection

    def __init__(self, config):
        super().__init__(config)
        require_masks_supported(config)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, multimodal_layout: MultimodalLayout | None = None,
                instruction_index: torch.Tensor | None = None, **kwargs):
        """Staged prefill when the batch has image crops; a decoding step over a `PyramidDropCache`;
        else the plain decoder."""
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.embed_tokens(input_ids)
        if multimodal_layout is None and isinstance(past_key_values, PyramidDropCache):
            return self._decode_step(inputs_embeds, position_ids, past_key_values)
        if multimodal_layout is None or multimodal_layout.num_crops == 0:
            return super().forward(attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache,
                                   past_key_values=past_key_values, inputs_embeds=inputs_embeds, **kwargs)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        cache = PyramidDropCache(config=self.config) if use_cache else None
        if instruction_index is None:
            instruction_index = find_instruction_index(multimodal_layout.attention_mask, None, IGNORE_INDEX)
        hidden = self._staged_prefill(inputs_embeds, multimodal_layout, instruction_index, cache)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden), past_key_values=cache)

    def _drop_schedule(self, layout: MultimodalLayout) -> DropSchedule:
        """Kept counts and stage lengths of `layout`, built once per layout."""
        num_drops, ratio = len(self.config.pyramid_drop_layers), self.config.pyramid_drop_ratio
        return layout.derived(("pyramid_drop_schedule", num_drops, ratio),
                              lambda lay: drop_schedule(lay.token_kind, num_drops, ratio))

    def derive_from_layout(self, layout: MultimodalLayout, dtype: torch.dtype) -> None:
        self._drop_schedule(layout)

    def _staged_prefill(self, hidden, layout, query_index, cache):
        """[B, T, D] -> [B, T, D]: dropped tokens keep the state they had when they left."""
        config = self.config
        drops = list(config.pyramid_drop_layers)
        schedule = self._drop_schedule(layout)
        batch, seq_len = layout.token_kind.shape
        state = StageState(index=torch.arange(seq_len, device=hidden.device).expand(batch, -1),
                           valid=layout.attention_mask.bool(), is_vision=layout.token_kind == TOKEN_VISION,
                           position_ids=layout.position_ids)
        output, stage_hidden, stage = hidden, hidden, 0  # [B, T, D], [B, Ts, D]
        mask, rotary = self._stage_mask(state, hidden.dtype), self.rotary_emb(hidden, state.position_ids)
        if cache is not None:
            cache.key_valid.append(state.valid)
        for layer_idx, layer in enumerate(self.layers[: config.num_hidden_layers]):
            if stage < len(drops) and layer_idx == drops[stage]:
                # Layer `layer_idx` is the first to see fewer tokens; its own q/k rank them.
                query_slot = (state.index == query_index[:, None]).long().argmax(dim=1)  # [B]
                scores = instruction_attention(layer, self.projection, stage_hidden, state, query_slot, self.rotary_emb)  # [B, Ts]
                keep = keep_mask(scores, state, schedule.keep_vision[stage].to(hidden.device))
                output = _scatter_rows(output, state, stage_hidden)
                stage += 1
                gather, state = pack(state, keep, schedule.stage_lengths[stage])
                stage_hidden = stage_hidden.gather(1, gather[..., None].expand(-1, -1, hidden.shape[-1]))
                mask, rotary = self._stage_mask(state, hidden.dtype), self.rotary_emb(hidden, state.position_ids)
                if cache is not None:
                    cache.key_valid.append(state.valid)
            stage_hidden = layer(stage_hidden, attention_mask=mask, position_embeddings=rotary,
                                 position_ids=state.position_ids, past_key_values=cache, use_cache=cache is not None)
        return _scatter_rows(output, state, stage_hidden)

    def _stage_mask(self, state: StageState, dtype: torch.dtype):
        """The mask every layer of a stage shares: [B, 1, Ts, Ts] additive, or flex's block mask."""
        return render_layer_mask(state.mask_rule(), self.config, dtype)

    def _decode_step(self, hidden, position_ids, cache: PyramidDropCache):
        """New tokens [B, q, D] at `position_ids` over the staged cache; every stage gets its own key mask."""
        if position_ids is None:
            raise ValueError("A PyramidDrop decoding step needs position_ids (the layout's positions_after gives them).")
        num_new = hidden.shape[1]  # hidden: [B, q, D]
        cache.append_tokens(num_new)
        rotary = self.rotary_emb(hidden, position_ids)
        masks = [render_layer_mask(rule, self.config, hidden.dtype) for rule in cache.decode_mask_rules(num_new)]
        stage_of = _stage_of_layers(self.config)
        for layer_idx, layer in enumerate(self.layers[: self.config.num_hidden_layers]):
            hidden = layer(hidden, attention_mask=masks[stage_of[layer_idx]], position_embeddings=rotary,
                           position_ids=position_ids, past_key_values=cache, use_cache=True)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden), past_key_values=cache)


def _stage_of_layers(config) -> list[int]:
    """Stage of every layer: the number of drop layers at or before it."""
    return [sum(drop <= layer_idx for drop in config.pyramid_drop_layers) for layer_idx in range(config.num_hidden_layers)]


def _scatter_rows(output: torch.Tensor, state: StageState, stage_hidden: torch.Tensor) -> torch.Tensor:
    """Write the stage's real slots back to their original rows of `output` [B, T, D]."""
    index = torch.where(state.valid, state.index, output.shape[1])  # padding slots go to a spare row
    padded = torch.cat([output, output.new_zeros(output.shape[0], 1, output.shape[2])], dim=1)
    padded = padded.scatter(1, index[..., None].expand(-1, -1, output.shape[2]), stage_hidden)
    return padded[:, :-1]


class PyramidDropCausalLM:
    """The LLaVA causal LM with the PyramidDrop decoder (picked by `pyramid_drop_layers` in the config)."""

    runs_pyramid_drop = True

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, images=None, image_sizes=None, multimodal_layout=None,
                instruction_index=None, **kwargs):
        """The images are expanded here (not in the parent) so the instruction index can be read
        from the expanded labels: in training it is the token just before the first supervised one."""
        if inputs_embeds is None and self.runs_multimodal_step(input_ids, images):
            inputs_embeds, labels, multimodal_layout = self.prepare_inputs_labels_for_multimodal(
                input_ids, attention_mask, labels, images, image_sizes, padding_side="right"
            )
            input_ids, attention_mask = None, multimodal_layout.attention_mask
            position_ids = multimodal_layout.position_ids
        if multimodal_layout is not None and instruction_index is None:
            instruction_index = find_instruction_index(multimodal_layout.attention_mask, labels, IGNORE_INDEX)
        if multimodal_layout is not None:
            kwargs["instruction_index"] = instruction_index
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=past_key_values, inputs_embeds=inputs_embeds, labels=labels,
                               multimodal_layout=multimodal_layout, **kwargs)

    def _recompute_inputs(self, new_ids, layout, inputs_embeds, attention_mask):
        """Without a cache the ranking query stays the prompt's last token (the prompt is left-padded)."""
        model_inputs = super()._recompute_inputs(new_ids, layout, inputs_embeds, attention_mask)
        prompt_end = inputs_embeds.shape[1] - 1
        model_inputs["instruction_index"] = torch.full((new_ids.shape[0],), prompt_end, device=new_ids.device)
        return model_inputs

    def decoder_layout_kwargs(self, layout: MultimodalLayout | None) -> dict:
        if layout is None:
            return {}
        return {"multimodal_layout": layout}
