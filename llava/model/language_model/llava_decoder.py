"""The baseline LLaVA-NeXT model, for any decoder family: config fields, inner model, causal LM.

These are mixins. `llava.model.language_model.families` combines them with a family's own
transformers classes (`LlamaConfig` / `LlamaModel` / `LlamaForCausalLM`, `Qwen2*`, `Phi3*`, ...), so
the decoder is that family's unchanged; this module adds the multimodal input step, the attention
mask that follows the layout's position ids, and generation from images.
"""

import logging
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from ..backends import check_flex_backward, flex_compile_stance, render_layer_mask, require_masks_supported
from ..image_merge import FLAT_NEWLINE, PATCH_MERGE_TYPES, merge_type_of_saved_config
from ..layout import MultimodalLayout
from ..llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from ..masks import position_causal_rule
from ..reduction.options import check_reduction_options

logger = logging.getLogger(__name__)

DEFAULT_GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
IMAGE_ASPECT_RATIOS = ("anyres", "pad", "square")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} '{value}'. Known: {', '.join(map(str, choices))}.")


@dataclass
class LlavaConfigFields:
    """The multimodal options of a LLaVA config (names as in LLaVA-NeXT and the ProxyV release),
    mixed in front of a decoder family's own config class.

    `image_newline_positions` picks the newline position scheme (docs/design.md §5.4). Left unset,
    it is `"release"` for a config written by the authors' code (it has their `proxyv` key) and
    `"natural"` otherwise; our own saves always write it.

    Token-reduction baselines (`llava.model.reduction`): `vision_token_reduction="visionzip"` keeps
    `visionzip_dominant + visionzip_contextual` tokens per crop; `pyramid_drop_layers` (e.g. [12, 20, 26])
    keeps `pyramid_drop_ratio` of the remaining vision tokens after the first l layers, for each listed l.

    Sliding windows: a LLaVA decoder attends over the whole sequence. The LLM's `sliding_window`
    (Mistral-7B-v0.1's 4096, Phi-3-mini-4k's 2047) is kept as `llm_sliding_window` and the family's
    own `sliding_window` is cleared, so prefill, decoding and every attention backend agree, and the
    authors' releases are reproduced (their prefill never applies the window; docs/design.md).
    """

    mm_vision_tower: str | None = None
    mm_vision_tower_config: dict | None = None
    mm_hidden_size: int | None = None
    mm_projector_type: str = "mlp2x_gelu"
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    mm_patch_merge_type: str = FLAT_NEWLINE
    image_aspect_ratio: str = "anyres"
    image_grid_pinpoints: list | str | None = None
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
    tokenizer_model_max_length: int | None = None
    tokenizer_padding_side: str = "right"
    image_newline_positions: str | None = None
    proxyv: bool | None = None
    vision_token_reduction: str | None = None
    visionzip_dominant: int = 360
    visionzip_contextual: int = 40
    pyramid_drop_layers: list | None = None
    pyramid_drop_ratio: float | int = 0.5
    llm_sliding_window: int | None = None

    def __post_init__(self, **kwargs):
        if getattr(self, "sliding_window", None) is not None:
            self.llm_sliding_window, self.sliding_window = self.sliding_window, None
        if getattr(self, "layer_types", None):  # Qwen2 / Qwen3 name each layer's attention kind
            self.layer_types = ["full_attention"] * len(self.layer_types)
        if self.image_newline_positions is None:
            self.image_newline_positions = "release" if self.proxyv is not None else "natural"
        check_reduction_options(self)
        if self.image_grid_pinpoints is None:
            self.image_grid_pinpoints = [list(p) for p in DEFAULT_GRID_PINPOINTS]
        _check_choice("image_newline_positions", self.image_newline_positions, ("natural", "release"))
        if str(self.image_aspect_ratio).startswith("anyres_max"):
            raise ValueError(f"image_aspect_ratio '{self.image_aspect_ratio}' (LLaVA-OneVision's capped AnyRes) is not "
                             f"supported; known: {', '.join(IMAGE_ASPECT_RATIOS)}.")
        _check_choice("image_aspect_ratio", self.image_aspect_ratio, IMAGE_ASPECT_RATIOS)
        _check_choice("mm_patch_merge_type", self.mm_patch_merge_type, PATCH_MERGE_TYPES)
        self._check_layout_supports_decoder()
        _check_choice("tokenizer_padding_side", self.tokenizer_padding_side, ("right", "left"))
        if self.mm_use_im_start_end:
            raise ValueError("mm_use_im_start_end=True is not supported; LLaVA-NeXT and ProxyV train with False.")
        study_keys = [key for key in ("proxyv_variant", "vision_mask_ratio") if kwargs.get(key) not in (None, "proxyv")]
        if study_keys and not self.proxyv:
            raise ValueError(f"{', '.join(study_keys)} are options of the ProxyV decoder, which this baseline config "
                             "would ignore: build the family's ProxyV config (e.g. LlavaProxyVConfig) instead.")
        super().__post_init__(**kwargs)


    def _check_layout_supports_decoder(self) -> None:
        """ProxyV, VisionZip and PyramidDrop need the flat_newline layout (they find crops by position)."""
        if self.mm_patch_merge_type == FLAT_NEWLINE:
            return
        users = [name for name, used in (("ProxyV", getattr(self, "proxyv_start_layer", None) is not None),
                                         ("VisionZip", self.vision_token_reduction is not None),
                                         ("PyramidDrop", bool(self.pyramid_drop_layers))) if used]
        if users:
            raise ValueError(f"mm_patch_merge_type '{self.mm_patch_merge_type}' is a LLaVA-NeXT layout, but "
                             f"{' and '.join(users)} run on the '{FLAT_NEWLINE}' layout (each crop's tokens, then a "
                             f"newline); set mm_patch_merge_type '{FLAT_NEWLINE}'.")

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """A saved config, its layout read as `llava.model.image_merge.merge_type_of_saved_config` says."""
        config_dict = {**config_dict, "mm_patch_merge_type": merge_type_of_saved_config(config_dict)}
        return super().from_dict(config_dict, **kwargs)

    def to_dict(self) -> dict:
        """The newline scheme is written for the flat_newline layout only: a config without it (and
        without `proxyv`) is read back as LLaVA-NeXT's layout, as LLaVA-NeXT's own configs are."""
        values = super().to_dict()
        if values.get("mm_patch_merge_type") != FLAT_NEWLINE:
            values.pop("image_newline_positions", None)
        return values


class LlavaDecoderModel(LlavaMetaModel):
    """A family's decoder model that also owns the vision tower, projector and image newline."""

    def __init__(self, config):
        super().__init__(config)
        self.init_multimodal_modules(config)
        self.post_init()

    def derive_from_layout(self, layout: MultimodalLayout, dtype: torch.dtype) -> None:
        """Build, and cache on `layout`, what the forward derives from its index values: nothing here.

        Variant decoders override this and read the same cache in their forward, so the FLOP counter
        can build these structures on CPU and then run the forward on the meta device.
        """


class LlavaCausalLM(LlavaMetaForCausalLM):
    """The baseline LLaVA-NeXT causal LM: images in, text out (mixed in front of a family's
    `*ForCausalLM`; `inner_model_class` is the family's `LlavaDecoderModel`)."""

    inner_model_class: type
    runs_pyramid_drop = False  # the PyramidDrop classes set it

    def __init__(self, config):
        if getattr(config, "pyramid_drop_layers", None) and not self.runs_pyramid_drop:
            raise ValueError(f"This config asks for PyramidDrop (pyramid_drop_layers={config.pyramid_drop_layers}), which "
                             f"{type(self).__name__} does not run; load it with llava.model.builder.load_pretrained_model "
                             "(or the class llava.model.model_registry.causal_lm_class_for_config picks).")
        PreTrainedModel.__init__(self, config)  # not the family's __init__: it would build a second decoder
        self.model = self.inner_model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        images=None,
        image_sizes=None,
        multimodal_layout: MultimodalLayout | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        """LLaVA's forward: with `images`, placeholders in `input_ids` are expanded first (right padding)."""
        if torch.is_grad_enabled():  # a forward that records gradients, in train or eval mode
            check_flex_backward(self.config, self.device, lambda: any(p.requires_grad for p in self.parameters()))
        if inputs_embeds is None and self.runs_multimodal_step(input_ids, images):
            inputs_embeds, labels, multimodal_layout = self.prepare_inputs_labels_for_multimodal(
                input_ids, attention_mask, labels, images, image_sizes, padding_side="right"
            )
            input_ids, attention_mask, position_ids = None, multimodal_layout.attention_mask, multimodal_layout.position_ids
        if multimodal_layout is not None:
            attention_mask = self.layout_attention_mask(multimodal_layout, inputs_embeds.dtype)
        with flex_compile_stance(self.config, self.device):
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **self.decoder_layout_kwargs(multimodal_layout),
                **kwargs,
            )

    def decoder_layout_kwargs(self, layout: MultimodalLayout | None) -> dict:
        """What the inner decoder needs from the layout besides the mask: nothing for the baseline."""
        return {}

    def layout_attention_mask(self, layout: MultimodalLayout, dtype: torch.dtype) -> torch.Tensor:
        """The mask for a prefill over `layout`: the 2D padding mask when positions follow the
        sequence (transformers then builds the causal mask for any attention backend), else a 4D
        mask that follows position ids, as the authors' release does."""
        if layout.index_causal:
            return layout.attention_mask
        require_masks_supported(self.config)
        return render_layer_mask(position_causal_rule(layout.position_ids, layout.attention_mask), self.config, dtype)

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, images=None, image_sizes=None, **kwargs):
        """Generate from token ids with `<image>` placeholders; returns only the new tokens.

        The prompt is re-padded on the left after the images are expanded, and its position ids go
        to transformers' generation loop, which continues them by one per new token.
        """
        if "inputs_embeds" in kwargs:
            raise ValueError("Pass token ids with image placeholders and `images`, not `inputs_embeds`.")
        attention_mask = kwargs.pop("attention_mask", None)
        if inputs is None:
            raise ValueError("generate needs the prompt's token ids (with <image> placeholders where images go).")
        # Text-only prompts take the same path: the layout step re-pads every batch on the left.
        inputs_embeds, _, layout = self.prepare_inputs_labels_for_multimodal(
            inputs, attention_mask, None, images, image_sizes, padding_side="left"
        )
        return super().generate(
            inputs_embeds=inputs_embeds,
            attention_mask=layout.attention_mask,
            position_ids=layout.position_ids,
            multimodal_layout=layout,
            **kwargs,
        )

    def prepare_inputs_for_generation(
        self, input_ids, past_key_values=None, attention_mask=None, inputs_embeds=None, multimodal_layout=None, **kwargs
    ):
        """The layout belongs to the prompt. The first step takes it whole; later steps get their
        positions from it (text continues at the count of real tokens, under both newline schemes)
        and, without a KV cache, recompute over the prompt plus the tokens generated so far."""
        is_first = kwargs.get("is_first_iteration", False)
        if multimodal_layout is not None and not is_first and not kwargs.get("use_cache", True):
            return self._recompute_inputs(input_ids, multimodal_layout, inputs_embeds, attention_mask)
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, past_key_values=past_key_values, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )
        if multimodal_layout is not None and is_first:
            model_inputs["multimodal_layout"] = multimodal_layout
        elif multimodal_layout is not None:
            # input_ids holds only generated tokens (the prompt went in as embeddings).
            step_len = model_inputs["input_ids"].shape[1]
            model_inputs["position_ids"] = multimodal_layout.positions_after(input_ids.shape[1])[:, -step_len:]
        return model_inputs

    def _recompute_inputs(self, new_ids, layout, inputs_embeds, attention_mask):
        """Inputs for a step without cache: the prompt's embeddings followed by the new tokens."""
        new_embeds = self.get_input_embeddings()(new_ids)  # [B, n, D]
        full_layout = layout.with_appended_text(new_ids.shape[1], attention_mask)
        return {
            "inputs_embeds": torch.cat([inputs_embeds, new_embeds], dim=1),
            "attention_mask": attention_mask,
            "position_ids": full_layout.position_ids,
            "multimodal_layout": full_layout,
            "use_cache": False,
        }

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        """transformers repeats tensors for beams / several return sequences; the layout too."""
        layout = model_kwargs.pop("multimodal_layout", None)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        if layout is not None:
            model_kwargs["multimodal_layout"] = layout.repeat_interleave(expand_size)
        return input_ids, model_kwargs

