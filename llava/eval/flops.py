"""Analytic prefill FLOPs of the baseline and the ProxyV decoder, from shapes alone.

This mirrors what our implementation computes, counted the way `torch.utils.flop_counter` counts:
only matrix products (mm/addmm/bmm, attention, convolution), a multiply-add is 2 FLOPs, a bias add,
norm, softmax, activation, RoPE, gather/scatter, copy or interpolation is 0, and attention is
counted over the full query x key matrix (no causal or mask skipping).

Sequence of one sample with `C` crops of `g*g` tokens and `text` text tokens:
* natural length `T = text + C*(g*g + 1)` (each crop is followed by one newline token);
* light stream `T_l = text + C` (text + newlines) plus `P = C*n` proxies.

Shapes: width `d`, `H` query heads and `H_kv` key/value heads of `head_dim` each (the config's
explicit `head_dim` where it has one, e.g. Qwen3; else d / H), so q is d -> H*head_dim, k and v are
d -> H_kv*head_dim each and o is H*head_dim -> d. Bias adds (Qwen2's q/k/v) and per-head norms
(Qwen3's q/k RMSNorm) count 0; Phi-3's fused `gate_up_proj` costs what gate + up cost.

Baseline layer: the q/k/v projections (fused or not, d -> (H + 2 H_kv) head_dim), o and the FFN on
all `T` tokens, attention `T x T`. A fused `qkv_proj` (Phi-3) in a two-stream layer computes only
the rows each stream needs (its weight is sliced), so it costs what separate q/k/v cost; only under
DeepSpeed ZeRO-3, where the module must be called whole, does it also compute and drop the k/v rows
of the queries and the q rows of the keys (not counted here: the benchmark runs without ZeRO).
ProxyV layer: q/o projections and the FFN on the `T_l + P` light tokens; k/v projections on the
`T + P` keys (natural sequence + proxies); attention `(T_l + P) x (T + P)`; the `VisionMLP` on the
`C*g*g` full tokens (`input_proj` d -> d_m, `proj.0` 2 d_m -> d_m, `proj.2` d_m -> d); `context_proj`
on the `P` proxies; with learned proxies the guidance `A @ context` ([g*g, n] x [n, d_m] per crop),
unless `learned_proxy_guidance` is "spatial" (a copy, as the authors' Phi-3 release does).
Proxy creation (once, entering layer s): spatial = bilinear interpolation, 0 counted FLOPs (about 8
per output element, i.e. ~C*n*d*8, negligible); learned = `W_k` on full tokens, the [n, g*g]
scores and the softmax-weighted sum of the full tokens.
Study variants (`proxyv_variant`), layers from s: `mask_vision_attention` is a baseline layer (a mask
saves nothing here); `skip_vision_attention` has q/o and the attention rows on the `T_l` light tokens,
k/v on all `T`, the FFN on all `T`; `vision_mlp` the same with the FFN on `T_l` and the unguided MLP
(d -> d_m -> d) on the `C*g*g` full tokens.
PyramidDrop ranks before each drop with the next layer's projections: the instruction token's query
and every current token's key (no values), one row of scores.
"""

import re
from dataclasses import dataclass

from transformers import CLIPVisionConfig

from llava.model import family_for_model_type
from llava.model.proxyv.modules import reduced_hidden_size


@dataclass(frozen=True)
class DecoderShape:
    """A decoder's matrix shapes; `head_dim` 0 means hidden_size // num_heads."""

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int = 0
    head_dim: int = 0

    def __post_init__(self):
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


@dataclass(frozen=True)
class SequenceShape:
    """One sample: `text` text tokens and `crops` image crops of `tokens_per_crop` (g*g) tokens."""

    text: int
    crops: int
    tokens_per_crop: int
    proxies_per_crop: int = 0

    @property
    def total(self) -> int:
        """T: text + every crop's tokens and newline."""
        return self.text + self.crops * (self.tokens_per_crop + 1)

    @property
    def light(self) -> int:
        """T_l: text + newlines."""
        return self.text + self.crops

    @property
    def proxies(self) -> int:
        """P: C*n."""
        return self.crops * self.proxies_per_crop

    @property
    def full(self) -> int:
        """C*g*g full vision tokens."""
        return self.crops * self.tokens_per_crop


def linear_flops(tokens: int, in_features: int, out_features: int) -> int:
    return 2 * tokens * in_features * out_features


def attention_flops(num_heads: int, head_dim: int, queries: int, keys: int) -> int:
    """Scores (Q K^T) plus the weighted sum of values, over the whole [queries, keys] matrix."""
    return 2 * (2 * num_heads * queries * keys * head_dim)


def ffn_flops(shape: DecoderShape, tokens: int) -> int:
    """Llama's gated FFN: gate, up (d -> i) and down (i -> d)."""
    return 3 * linear_flops(tokens, shape.hidden_size, shape.intermediate_size)


def baseline_layer_flops(shape: DecoderShape, tokens: int) -> int:
    """One ordinary decoder layer over `tokens` (T) tokens (fused or not, q, k and v once each)."""
    d = shape.hidden_size
    projections = linear_flops(tokens, d, shape.q_size + 2 * shape.kv_size) + linear_flops(tokens, shape.q_size, d)
    return projections + attention_flops(shape.num_heads, shape.head_dim, tokens, tokens) + ffn_flops(shape, tokens)


def two_stream_attention_breakdown(shape: DecoderShape, queries: int, keys: int) -> dict[str, int]:
    """Attention whose `queries` and `keys` are different token streams (ProxyV layers, study variants)."""
    d = shape.hidden_size
    return {
        "q_o_proj": linear_flops(queries, d, shape.q_size) + linear_flops(queries, shape.q_size, d),
        "k_v_proj": 2 * linear_flops(keys, d, shape.kv_size),
        "attention": attention_flops(shape.num_heads, shape.head_dim, queries, keys),
    }


def proxyv_layer_breakdown(shape: DecoderShape, seq: SequenceShape, reduced_size: int, learn_proxy: bool = False,
                           assignment_guidance: bool | None = None) -> dict[str, int]:
    """Per-part FLOPs of one ProxyV layer; `reduced_size` is d_m. `assignment_guidance` (default:
    `learn_proxy`): the guided update maps proxies back by the learned assignment A, a matmul, rather
    than by the spatial copy (`learned_proxy_guidance` "spatial", the authors' Phi-3 release)."""
    if assignment_guidance is None:
        assignment_guidance = learn_proxy
    d, d_m = shape.hidden_size, reduced_size
    queries = seq.light + seq.proxies  # T_l + P
    keys = seq.total + seq.proxies  # T + P
    parts = {
        **two_stream_attention_breakdown(shape, queries, keys),
        "ffn": ffn_flops(shape, queries),
        "vision_mlp": linear_flops(seq.full, d, d_m) + linear_flops(seq.full, 2 * d_m, d_m)
        + linear_flops(seq.full, d_m, d),
        "context_proj": linear_flops(seq.proxies, d, d_m),
        # A [g*g, n] @ context [n, d_m] per crop; spatial guidance is a copy.
        "guidance": linear_flops(seq.full, seq.proxies_per_crop, d_m) if assignment_guidance else 0,
    }
    return parts


def proxyv_layer_flops(shape: DecoderShape, seq: SequenceShape, reduced_size: int, learn_proxy: bool = False,
                       assignment_guidance: bool | None = None) -> int:
    return sum(proxyv_layer_breakdown(shape, seq, reduced_size, learn_proxy, assignment_guidance).values())


def study_layer_flops(shape: DecoderShape, seq: SequenceShape, variant: str, reduced_size: int) -> int:
    """One layer >= s of a study variant (`llava.model.proxyv.study`); `reduced_size` is d_m."""
    if variant == "mask_vision_attention":
        return baseline_layer_flops(shape, seq.total)
    d = shape.hidden_size
    attention = sum(two_stream_attention_breakdown(shape, seq.light, seq.total).values())
    if variant == "skip_vision_attention":
        return attention + ffn_flops(shape, seq.total)
    if variant == "vision_mlp":
        unguided = linear_flops(seq.full, d, reduced_size) + linear_flops(seq.full, reduced_size, d)
        return attention + ffn_flops(shape, seq.light) + unguided
    raise ValueError(f"No analytic FLOPs for proxyv_variant '{variant}'.")


def proxy_creation_flops(shape: DecoderShape, seq: SequenceShape, reduced_size: int, learn_proxy: bool) -> int:
    """Once per prefill, entering layer s: 0 for spatial (interpolation is not a matmul)."""
    if not learn_proxy:
        return 0
    keys = linear_flops(seq.full, shape.hidden_size, reduced_size)  # W_k on every full token
    scores = linear_flops(seq.proxies, reduced_size, seq.tokens_per_crop)  # [n, d_m] x [d_m, g*g] per crop
    pooled = linear_flops(seq.proxies, seq.tokens_per_crop, shape.hidden_size)  # softmax [n, g*g] @ V [g*g, d]
    return keys + scores + pooled


def llm_prefill_flops(shape: DecoderShape, seq: SequenceShape, num_layers: int, start_layer: int | None = None,
                      reduced_size: int = 0, learn_proxy: bool = False, variant: str = "proxyv",
                      assignment_guidance: bool | None = None) -> int:
    """All decoder layers; `start_layer` None (or = num_layers) is the baseline; `variant` a study variant;
    `assignment_guidance` as for `proxyv_layer_breakdown`."""
    start = num_layers if start_layer is None else start_layer
    total = start * baseline_layer_flops(shape, seq.total)
    if start < num_layers and variant != "proxyv":
        total += (num_layers - start) * study_layer_flops(shape, seq, variant, reduced_size)
    elif start < num_layers:
        total += proxy_creation_flops(shape, seq, reduced_size, learn_proxy)
        total += (num_layers - start) * proxyv_layer_flops(shape, seq, reduced_size, learn_proxy, assignment_guidance)
    return total


def pyramid_drop_llm_flops(shape: DecoderShape, seq: SequenceShape, num_layers: int, drop_layers: list[int],
                           ratio: float) -> int:
    """PyramidDrop's decoder: ordinary layers over a sequence that loses vision tokens after each
    layer count in `drop_layers` (floor(ratio * remaining) kept), plus each drop's ranking: the
    instruction token's query and every token's key in the next layer, and one row of scores."""
    tokens, vision, total = seq.total, seq.full, 0
    stage_starts = [0, *drop_layers]
    stage_ends = [*drop_layers, num_layers]
    for index, (begin, end) in enumerate(zip(stage_starts, stage_ends, strict=True)):
        if index > 0:  # the drop entering this stage ranks the current tokens first
            total += linear_flops(1, shape.hidden_size, shape.q_size)  # q of the instruction token
            total += linear_flops(tokens, shape.hidden_size, shape.kv_size)  # keys of every token
            total += 2 * shape.num_heads * shape.head_dim * tokens  # its scores over them
            kept = int(vision * ratio)
            tokens, vision = tokens - vision + kept, kept
        total += (end - begin) * baseline_layer_flops(shape, tokens)
    return total


def lm_head_flops(shape: DecoderShape, tokens: int = 1) -> int:
    """Logits of the last `tokens` positions (1 for a generation prefill: logits_to_keep=1)."""
    return linear_flops(tokens, shape.hidden_size, shape.vocab_size)


def clip_tower_flops(hidden: int, intermediate: int, layers: int, image_size: int, patch_size: int,
                     crops: int, channels: int = 3) -> int:
    """CLIP ViT over `crops` images: patch convolution, then every layer on g*g + 1 tokens (CLS).

    All `layers` run (transformers' CLIPVisionModel computes every layer even though LLaVA reads
    the second to last), as in LLaVA.
    """
    patches = (image_size // patch_size) ** 2
    tokens = crops * (patches + 1)
    patch_embed = linear_flops(crops * patches, channels * patch_size * patch_size, hidden)
    per_layer = 4 * linear_flops(tokens, hidden, hidden) + 2 * linear_flops(tokens, hidden, intermediate)
    per_layer += crops * attention_flops(1, hidden, patches + 1, patches + 1)
    return patch_embed + layers * per_layer


def mlp_projector_flops(vision_hidden: int, hidden: int, depth: int, tokens: int) -> int:
    """`mlp{depth}x_gelu`: Linear(d_vis, d) then depth - 1 Linear(d, d); depth 0 is the identity."""
    if depth == 0:
        return 0
    return linear_flops(tokens, vision_hidden, hidden) + (depth - 1) * linear_flops(tokens, hidden, hidden)


def decoder_shape(config) -> DecoderShape:
    """The decoder shape of a LLaVA / ProxyV config of any family (its `model_type` names the family)."""
    classes = family_for_model_type(config.model_type)
    if classes is None:
        raise ValueError(f"No analytic FLOPs for model_type '{config.model_type}': not a LLaVA / ProxyV config.")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return DecoderShape(config.hidden_size, config.intermediate_size, config.num_attention_heads,
                        config.num_key_value_heads, config.vocab_size, head_dim)


def _projector_depth(projector_type: str) -> int:
    """Linear layers of a projector: `linear` 1, `mlp{N}x_gelu` N, `identity` 0."""
    if projector_type == "identity":
        return 0
    if projector_type == "linear":
        return 1
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if not match:
        raise ValueError(f"No analytic FLOPs for projector '{projector_type}'.")
    return int(match.group(1))


def analytic_prefill_flops(config, text_tokens: int, crops: int) -> dict[str, int]:
    """Vision tower, projector, decoder layers and LM head (last token) FLOPs of one prefill."""
    vision = CLIPVisionConfig(**config.mm_vision_tower_config)
    grid = vision.image_size // vision.patch_size
    shape = decoder_shape(config)
    proxyv = getattr(config, "proxyv_start_layer", None) is not None
    variant = getattr(config, "proxyv_variant", "proxyv")
    proxies = config.decoder_proxies_per_crop if proxyv else 0
    learn_proxy = bool(getattr(config, "learn_proxy", False))
    assignment_guidance = learn_proxy and getattr(config, "learned_proxy_guidance", "assignment") == "assignment"
    tokens_per_crop = grid * grid
    if getattr(config, "vision_token_reduction", None) == "visionzip":  # the LLM sees the kept tokens only
        tokens_per_crop = config.visionzip_dominant + config.visionzip_contextual
    seq = SequenceShape(text_tokens, crops, tokens_per_crop, proxies)
    reduced = reduced_hidden_size(config.hidden_size, config.hidden_size_reduce_factor) if proxyv else 0
    start = config.proxyv_start_layer if proxyv else None
    drop_layers = getattr(config, "pyramid_drop_layers", None)
    return {
        "vision_flops": clip_tower_flops(vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers,
                                         vision.image_size, vision.patch_size, crops, vision.num_channels),
        "projector_flops": mlp_projector_flops(vision.hidden_size, config.hidden_size,
                                               _projector_depth(config.mm_projector_type), seq.full),
        "llm_flops": pyramid_drop_llm_flops(shape, seq, config.num_hidden_layers, drop_layers,
                                            config.pyramid_drop_ratio) if drop_layers else
        llm_prefill_flops(shape, seq, config.num_hidden_layers, start, reduced,
                          learn_proxy, variant, assignment_guidance),
        "lm_head_flops": lm_head_flops(shape, 1),
    }
