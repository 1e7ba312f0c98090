"""ProxyV for any decoder family: config fields, inner model and causal LM (mixins).

Layers `0 .. s-1` are ordinary; from `s = proxyv_start_layer` on, each layer is the family's
ProxyV decoder layer (`llava.model.proxyv.layer`) running the two-stream computation of
docs/design.md ("ProxyV, exactly") with its own `VisionMLP`. `proxyv_variant` selects instead one
of the paper's study variants from layer `s` (`llava.model.proxyv.study`). Our checkpoints save as
`llava_proxyv_<family>`; the authors' releases (`llava_llama` / `llava_qwen` / `llava_phi` with
`proxyv: true`) load into the same classes via the builder. `llava.model.language_model.families`
combines these mixins with each family's classes.
"""

import math
from dataclasses import dataclass, fields

import torch
from torch import nn
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast

from ..backends import masked_backend, render_layer_mask, require_masks_supported
from ..layout import MultimodalLayout
from ..proxyv.modules import (
    LearnedProxyInitializer,
    reduced_hidden_size,
    spatial_proxies,
)
from ..proxyv.plan import ProxyVPlan, build_proxyv_plan
from ..proxyv.study import start_layer_for_mask_ratio, vision_masked_rule
from ..proxyv.variants import decoder_variant


@dataclass
class ProxyVConfigFields:
    """ProxyV's options (names as in the authors' release), mixed in front of a family's LLaVA config.

    `proxyv_start_layer` defaults to the middle layer; `s = num_hidden_layers` means no ProxyV
    layer. `hidden_size_reduce_factor` defaults to 4 when hidden_size >= 1024, else 2.

    `proxyv_variant` is "proxyv" (default) or a study variant from layer `s`: "mask_vision_attention"
    (training-free, no new weights), "skip_vision_attention" or "vision_mlp". `vision_mask_ratio` q
    (mask_vision_attention only) sets s = L - round(q*L), the top round(q*L) layers masked.

    `learned_proxy_guidance` (learned proxies only) is how the guided update maps the proxies back
    to the full tokens: "assignment" (A P, docs/design.md) or "spatial" (each proxy copied to its
    r x r block). Left unset it is "assignment", except for a config written by the authors' code
    of a family whose release used the spatial copy (their Phi-3 file: `release_learned_proxy_guidance`).
    """

    release_learned_proxy_guidance = "assignment"  # per family; not a config field

    proxyv_start_layer: int | None = None
    proxyv_reduce_factor: int = 4
    per_crop_token_len: int = 576
    max_num_image_crops: int = 5
    learn_proxy: bool = False
    hidden_size_reduce_factor: int | None = None
    proxyv_variant: str = "proxyv"
    vision_mask_ratio: float | int | None = None
    learned_proxy_guidance: str | None = None

    def __post_init__(self, **kwargs):
        # The authors' config has `proxyv` and none of our scheme / guidance keys (our saves write
        # all three); a config built in code has none of them.
        if self.image_newline_positions is None:
            self.image_newline_positions = "release" if self.proxyv is not None else "natural"
        if self.learned_proxy_guidance is None:
            from_authors = self.proxyv is not None
            self.learned_proxy_guidance = self.release_learned_proxy_guidance if from_authors else "assignment"
        if self.learned_proxy_guidance not in ("assignment", "spatial"):
            raise ValueError(f"learned_proxy_guidance must be 'assignment' or 'spatial', got '{self.learned_proxy_guidance}'.")
        self.proxyv = True
        kwargs.pop("image_token_len_per_side", None)  # the authors' derived key; we derive it
        self._check_variant()
        if self.proxyv_start_layer is None:
            self.proxyv_start_layer = self.num_hidden_layers // 2
        if self.hidden_size_reduce_factor is None:
            self.hidden_size_reduce_factor = 4 if self.hidden_size >= 1024 else 2
        self._check_proxyv_options()
        super().__post_init__(**kwargs)

    def _check_variant(self) -> None:
        """Validate `proxyv_variant` and turn `vision_mask_ratio` into the start layer."""
        variant = decoder_variant(self.proxyv_variant)
        if self.learn_proxy and not variant.makes_proxies:
            raise ValueError(f"learn_proxy applies to proxyv_variant 'proxyv' only, not '{self.proxyv_variant}'.")
        if self.vision_mask_ratio is None:
            return
        if not variant.masks_ordinary_layers:
            raise ValueError("vision_mask_ratio applies to proxyv_variant 'mask_vision_attention' only, "
                             f"not '{self.proxyv_variant}'; give proxyv_start_layer instead.")
        start = start_layer_for_mask_ratio(self.vision_mask_ratio, self.num_hidden_layers)
        if self.proxyv_start_layer is not None and self.proxyv_start_layer != start:
            raise ValueError(f"vision_mask_ratio {self.vision_mask_ratio} means proxyv_start_layer {start} of "
                             f"{self.num_hidden_layers} layers, but proxyv_start_layer is {self.proxyv_start_layer}; "
                             "give only one of them.")
        self.proxyv_start_layer = start

    def _check_proxyv_options(self) -> None:
        if not 0 <= self.proxyv_start_layer <= self.num_hidden_layers:
            raise ValueError(
                f"proxyv_start_layer must be in [0, {self.num_hidden_layers}] (num_hidden_layers), "
                f"got {self.proxyv_start_layer}."
            )
        grid = math.isqrt(self.per_crop_token_len)
        if grid * grid != self.per_crop_token_len:
            raise ValueError(f"per_crop_token_len must be a square (g*g), got {self.per_crop_token_len}.")
        if self.proxyv_reduce_factor < 1 or grid % self.proxyv_reduce_factor:
            raise ValueError(
                f"proxyv_reduce_factor {self.proxyv_reduce_factor} must divide the crop grid side {grid}; choose "
                f"one that does (--proxyv_reduce_factor, PROXYV_REDUCE_FACTOR: 4 for CLIP-L/336's 24, 2 for the "
                "tiny CLIP's 6)."
            )

    @property
    def image_token_len_per_side(self) -> int:
        return math.isqrt(self.per_crop_token_len)

    @property
    def proxy_grid_size(self) -> int:
        return self.image_token_len_per_side // self.proxyv_reduce_factor

    @property
    def num_proxies_per_crop(self) -> int:
        return self.proxy_grid_size**2

    @property
    def decoder_proxies_per_crop(self) -> int:
        """Proxies per crop the decoder actually creates: none for the study variants."""
        return self.num_proxies_per_crop if decoder_variant(self.proxyv_variant).makes_proxies else 0


# Every key a ProxyV config adds to its family's LLaVA config (plus the authors' `proxyv` flag and
# derived `image_token_len_per_side`): what a baseline built from a ProxyV config leaves out.
PROXYV_CONFIG_KEYS = ("proxyv", "image_token_len_per_side", *(f.name for f in fields(ProxyVConfigFields)))


class ProxyVDecoderModel:
    """LLaVA decoder whose layers from `proxyv_start_layer` on are ProxyV (or study-variant) layers
    (mixed in front of a family's `LlavaDecoderModel`; `proxyv_layer_class` is the family's layer).

    `vision_mlp_layers` holds one `VisionMLP` per ProxyV layer, one `UnguidedVisionMLP` per layer for
    the `vision_mlp` variant, and nothing for `skip_vision_attention` / `mask_vision_attention`.
    """

    proxyv_layer_class: type

    def __init__(self, config):
        super().__init__(config)
        start, num_layers = config.proxyv_start_layer, config.num_hidden_layers
        variant = decoder_variant(config.proxyv_variant)
        if variant.two_stream_layers:  # the masked variant keeps ordinary layers
            for index in range(start, num_layers):
                self.layers[index] = self.proxyv_layer_class(config, index)
        reduced = reduced_hidden_size(config.hidden_size, config.hidden_size_reduce_factor)
        mlp_class = variant.full_stream_module
        self.vision_mlp_layers = nn.ModuleList(
            mlp_class(config.hidden_size, reduced, config.rms_norm_eps) for _ in range(num_layers - start)
        ) if mlp_class else nn.ModuleList()
        if config.learn_proxy:
            self.proxyv_initializer = LearnedProxyInitializer(config.hidden_size, reduced, config.num_proxies_per_crop)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, LearnedProxyInitializer):
            nn.init.normal_(module.proxyv_tokens, std=1 / math.sqrt(module.proxyv_tokens.shape[-1]))

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, multimodal_layout: MultimodalLayout | None = None, **kwargs):
        """ProxyV prefill when the batch has image crops and ProxyV layers; else the plain decoder."""
        start = self.config.proxyv_start_layer
        has_crops = multimodal_layout is not None and multimodal_layout.num_crops > 0
        # A text-only training batch also takes the ProxyV path (with no crops, so no full tokens and no
        # proxies): its layers call the guided-update modules in the order an image batch does, on
        # empty tensors, so ZeRO-3 ranks gather the same parameters in the same order every step.
        text_only_training = self.training and multimodal_layout is not None and bool(self.vision_mlp_layers)
        if (not has_crops and not text_only_training) or start >= self.config.num_hidden_layers:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   past_key_values=past_key_values, inputs_embeds=inputs_embeds,
                                   use_cache=use_cache, **kwargs)
        if inputs_embeds is None:
            raise ValueError("The ProxyV prefill takes inputs_embeds built by the multimodal layout step.")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        hidden = self._standard_layers(inputs_embeds, attention_mask, position_ids, past_key_values, use_cache, **kwargs)
        if not decoder_variant(self.config.proxyv_variant).two_stream_layers:
            hidden = self._vision_masked_layers(hidden, multimodal_layout, past_key_values, use_cache, **kwargs)
            return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden),
                                           past_key_values=past_key_values if use_cache else None)
        hidden = self._proxyv_layers(hidden, self._proxyv_plan(multimodal_layout, hidden.dtype), past_key_values)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden),
                                       past_key_values=past_key_values if use_cache else None)

    def _proxyv_plan(self, layout: MultimodalLayout, dtype: torch.dtype) -> ProxyVPlan:
        """The plan of `layout` for this decoder's proxies per crop and attention backend, built once per layout."""
        num_proxies, backend = self.config.decoder_proxies_per_crop, masked_backend(self.config)
        return layout.derived(("proxyv_plan", num_proxies, dtype, backend),
                              lambda lay: build_proxyv_plan(lay, num_proxies, dtype, backend))

    def derive_from_layout(self, layout: MultimodalLayout, dtype: torch.dtype) -> None:
        if decoder_variant(self.config.proxyv_variant).two_stream_layers:
            self._proxyv_plan(layout, dtype)

    def _standard_layers(self, hidden, attention_mask, position_ids, past_key_values, use_cache, **kwargs):
        """Layers 0 .. s-1 over the natural sequence, exactly as the baseline runs them."""
        mask = create_causal_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                  past_key_values=past_key_values, position_ids=position_ids)
        position_embeddings = self.rotary_emb(hidden, position_ids=position_ids)
        for layer in self.layers[: self.config.proxyv_start_layer]:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings,
                           position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache, **kwargs)
        return hidden

    def _vision_masked_layers(self, hidden, layout: MultimodalLayout, past_key_values, use_cache, **kwargs):
        """Layers s .. L-1 of `mask_vision_attention`: ordinary layers, vision queries blind to other vision keys."""
        require_masks_supported(self.config)
        mask = render_layer_mask(vision_masked_rule(layout), self.config, hidden.dtype)  # [B, 1, T, T] or BlockMask
        position_embeddings = self.rotary_emb(hidden, position_ids=layout.position_ids)
        for layer in self.layers[self.config.proxyv_start_layer :]:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings,
                           position_ids=layout.position_ids, past_key_values=past_key_values, use_cache=use_cache,
                           **kwargs)
        return hidden

    def _proxyv_layers(self, hidden, plan: ProxyVPlan, past_key_values):
        """Create the proxies entering layer s, then run every ProxyV layer on the two streams."""
        config = self.config
        proxy_stream, assignment = self._entering_proxies(hidden, plan)  # [B, P, D], [N, G, n] or None
        num_proxyv_layers = config.num_hidden_layers - config.proxyv_start_layer
        vision_mlps = list(self.vision_mlp_layers) or [None] * num_proxyv_layers  # None: the layer's own FFN
        rotary = self._stream_rotary(hidden, plan)
        for layer, vision_mlp in zip(self.layers[config.proxyv_start_layer :], vision_mlps):
            hidden, proxy_stream = layer(hidden, proxy_stream, assignment, proxyv_plan=plan, vision_mlp=vision_mlp,
                                         rotary=rotary, past_key_values=past_key_values)
        return hidden

    def _stream_rotary(self, hidden: torch.Tensor, plan: ProxyVPlan):
        """RoPE (cos, sin) of the query stream [B, Tl + P, r] and of the key stream [B, T + P, r], once
        for all ProxyV layers (their positions are the plan's)."""
        return self.rotary_emb(hidden, plan.query_positions), self.rotary_emb(hidden, plan.key_positions)

    def _entering_proxies(self, hidden, plan: ProxyVPlan):
        """The proxy stream [B, P, D] entering layer s and, for learned proxies, A [N, G, n].

        The study variants `skip_vision_attention` / `vision_mlp` have no proxies: an empty stream.
        """
        config = self.config
        if not decoder_variant(config.proxyv_variant).makes_proxies:
            return hidden.new_zeros(hidden.shape[0], 0, hidden.shape[-1]), None
        full = plan.gather_full(hidden)  # [N, G, D]
        if config.learn_proxy:
            proxies, assignment = self.proxyv_initializer(full)  # [N, n, D], [N, G, n]
        else:
            proxies = spatial_proxies(full, config.image_token_len_per_side, config.proxy_grid_size)
            assignment = None
        return plan.arrange_proxies(proxies, hidden.shape[0]), assignment


class ProxyVCausalLM:
    """LLaVA causal LM with the ProxyV decoder; same inputs, outputs and generation as the baseline."""

    def decoder_layout_kwargs(self, layout: MultimodalLayout | None) -> dict:
        return {"multimodal_layout": layout}
