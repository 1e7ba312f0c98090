"""`python -m llava.eval.layer_profile`: where the prefill time of one ProxyV layer and one baseline layer goes.

At `llava.eval.prefill_benchmark`'s setting (its presets, `--crops` crops + `--text-tokens` text
tokens, random weights and inputs) it builds the benchmark's baseline and its ProxyV model from
`--proxyv-start-layers` s, and times layer s of each on the same hidden states [1, T, D]:

* the real layer's forward, as the decoder calls it (ProxyV: `ProxyVLayerMixin.forward` with the
  plan, the entering proxies and its `VisionMLP`; baseline: the family's decoder layer with the
  causal mask and RoPE of the forward) -- the layer's total;
* the same computation replayed part by part, calling the functions the layer calls in the order
  it calls them (norms, q / k / v projections, RoPE, KV cache, core attention, o_proj, FFN, the plan's
  gathers and scatters, the guided update's pieces), with a device sync around each part -- the
  parts. The replay's output is compared with the layer's (`replay_exact`), so a change to the
  layer that the replay does not follow shows up as `false` instead of as silently wrong numbers;
* what a forward builds once for all its layers (ProxyV: the plan with its mask, the entering
  proxies and RoPE's cos / sin of both streams; baseline: the causal mask and RoPE's cos / sin),
  reported separately;
* the ProxyV plan built with each mask rendering (dense additive for eager / sdpa, FlexAttention's
  block mask): build time, the mask's size through the forward, and peak memory while building.

Each time is the median over `--repeats` rounds (after `--warmup`) with its min and max; the
rounds alternate the two layers, so a busy machine slows both alike. "unaccounted" is the layer's
median minus the sum of its parts' medians (timer overhead, allocation, noise). It prints a table
(part, ms median (min-max), share of the layer) and writes JSON with `--json`.
"""

import argparse
import dataclasses
import inspect
import logging
import os
import statistics
import sys
import time

import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from llava.errors import UsageError, UserError, one_line, run_main
from llava.model import FAMILIES
from llava.model.attention import apply_rope
from llava.model.backends import ATTN_IMPLEMENTATIONS, masked_attention_interface
from llava.model.builder import resolve_dtype
from llava.model.proxyv.modules import proxy_guidance

from .mask_build import format_mask_build, measure_mask_build
from .prefill_benchmark import (
    Variant,
    build_model,
    build_variants,
    check_flex_device,
    cpu_layout,
    make_input_ids,
    write_json,
)
from .presets import load_model_spec

logger = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda")
HIDDEN_SEED = 0
UNACCOUNTED = "unaccounted"


# ----------------------------------------------------------------------------- timing


class PartTimer:
    """Wall time of named parts, one list of samples per name; `record=False` runs without recording."""

    def __init__(self, device: str):
        self.device = device
        self.samples: dict[str, list[float]] = {}
        self.groups: dict[str, str] = {}
        self.record = True

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def run(self, name: str, group: str, fn, *args, **kwargs):
        """`fn(*args, **kwargs)`, timed as part `name` of `group`."""
        self._sync()
        start = time.perf_counter()
        output = fn(*args, **kwargs)
        self._sync()
        if self.record:
            self.samples.setdefault(name, []).append(time.perf_counter() - start)
            self.groups[name] = group
        return output


def summarize(samples: list[float]) -> dict:
    """Median, min and max of timed runs, in milliseconds."""
    return {"median_ms": 1e3 * statistics.median(samples), "min_ms": 1e3 * min(samples),
            "max_ms": 1e3 * max(samples)}


# ----------------------------------------------------------------------------- the layers, part by part


@dataclasses.dataclass
class LayerInputs:
    """One layer's inputs at the benchmark's setting, built once per model."""

    model: torch.nn.Module  # the causal LM
    layer: torch.nn.Module  # layer s
    hidden: torch.Tensor  # [1, T, D] entering layer s
    layout: object  # MultimodalLayout on the device
    per_forward: dict  # what the decoder builds once per forward (plan, proxies, mask, rotary)

    def cache(self) -> DynamicCache:
        """A fresh KV cache (the layer appends its keys and values to it)."""
        return DynamicCache(config=self.model.config)


def proxyv_layer_forward(inputs: LayerInputs):
    """The real ProxyV layer, as `ProxyVDecoderModel._proxyv_layers` calls it: (hidden [1, T, D], proxies [1, P, D])."""
    state = inputs.per_forward
    return inputs.layer(inputs.hidden, state["proxies"], state["assignment"], proxyv_plan=state["plan"],
                        vision_mlp=state["vision_mlp"], rotary=state["rotary"], past_key_values=inputs.cache())


def proxyv_layer_parts(inputs: LayerInputs, timer: PartTimer):
    """`ProxyVLayerMixin._proxyv_forward` (with `attend` and `guided_update`) part by part; same output."""
    layer, hidden, state = inputs.layer, inputs.hidden, inputs.per_forward
    plan, proxies, attn, projection = state["plan"], state["proxies"], inputs.layer.self_attn, inputs.layer.projection
    cache, light_slots = inputs.cache(), state["plan"].num_light_slots
    (q_cos, q_sin), (k_cos, k_sin) = state["rotary"]
    light_in = timer.run("gather_light + cat proxies", "gather/scatter",
                         lambda: torch.cat([plan.gather_light(hidden), proxies], dim=1))  # [1, Tl + P, D]
    normed_natural = timer.run("input norm, natural (T)", "norms", layer.input_layernorm, hidden)  # [1, T, D]
    normed_light = timer.run("input norm, light (Tl + P)", "norms", layer.input_layernorm, light_in)
    key_in = timer.run("cat key stream", "gather/scatter",
                       lambda: torch.cat([normed_natural, normed_light[:, light_slots:]], 1))  # [1, T + P, D]
    query = timer.run("q_proj (Tl + P)", "attention: q/k/v", projection.queries, attn, normed_light)
    key, value = timer.run("k/v_proj (T + P, full tokens)", "attention: q/k/v", projection.keys_values, attn, key_in)

    query, key = timer.run("RoPE (rotate)", "rope", lambda: (apply_rope(query, q_cos, q_sin),
                                                              apply_rope(key, k_cos, k_sin)))  # [1, H, Tl + P, hd], [1, Hkv, T + P, hd]
    timer.run("KV cache update", "cache", cache.update, key[:, :, : hidden.shape[1]], value[:, :, : hidden.shape[1]],
              attn.layer_idx)
    output, _ = timer.run("core attention (masked)", "attention: core", masked_attention_interface(attn.config), attn,
                          query, key, value, plan.attention_mask, dropout=0.0, scaling=attn.scaling)
    attn_out = timer.run("o_proj", "attention: o_proj",
                         lambda: attn.o_proj(output.reshape(*normed_light.shape[:-1], -1).contiguous()))
    light = timer.run("residual (attention)", "residual",
                      lambda: light_in + projection.after_attention(layer, attn_out))
    normed = timer.run("post-attention norm", "norms", layer.post_attention_layernorm, light)
    ffn_out = timer.run("FFN (Tl + P)", "ffn", layer.mlp, normed)
    light = timer.run("residual (FFN)", "residual", lambda: light + projection.after_mlp(layer, ffn_out))
    new_proxies = light[:, light_slots:]  # [1, P, D]
    full = timer.run("gather_full", "gather/scatter", plan.gather_full, hidden)  # [N, G, D]
    hidden = timer.run("scatter_light", "gather/scatter", plan.scatter_light, hidden, light[:, :light_slots])
    update = vision_mlp_parts(layer, full, new_proxies, state, timer)  # [N, G, D]
    return timer.run("scatter_full", "gather/scatter", plan.scatter_full, hidden, update), new_proxies


def vision_mlp_parts(layer, full: torch.Tensor, new_proxies: torch.Tensor, state: dict, timer: PartTimer):
    """`variants.guided_update` and `VisionMLP.forward` part by part: full [N, G, D] -> updated [N, G, D]."""
    config, module, plan = layer.self_attn.config, state["vision_mlp"], state["plan"]
    assignment = None if config.learned_proxy_guidance == "spatial" else state["assignment"]

    def guidance():
        context = module.context_proj(plan.crop_proxies(new_proxies))  # [N, n, d_m]
        return proxy_guidance(context, assignment, config.proxy_grid_size, config.proxyv_reduce_factor)

    guide = timer.run("VisionMLP: guidance (context_proj + copy)", "vision_mlp", guidance)  # [N, G, d_m]
    mixed = timer.run("VisionMLP: input_proj + cat", "vision_mlp",
                      lambda: torch.cat([module.input_proj(full), guide], dim=-1))  # [N, G, 2 d_m]
    projected = timer.run("VisionMLP: W1, SiLU, W2", "vision_mlp", module.proj, mixed)  # [N, G, D]
    return timer.run("VisionMLP: residual + RMSNorm", "vision_mlp",
                     lambda: module.layernorm_post(projected + full))


def baseline_layer_forward(inputs: LayerInputs):
    """The family's decoder layer, as the decoder model's forward calls it: [1, T, D]."""
    state = inputs.per_forward
    return inputs.layer(inputs.hidden, attention_mask=state["mask"], position_embeddings=state["rotary"],
                        position_ids=inputs.layout.position_ids, past_key_values=inputs.cache(), use_cache=True)


def _attention_function(attn):
    """The attention function the family's attention module calls for its configured backend."""
    eager = inspect.getmodule(type(attn)).eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager)


def baseline_layer_parts(inputs: LayerInputs, timer: PartTimer):
    """The family's decoder layer (transformers' Llama-style forward) part by part; same output [1, T, D]."""
    layer, hidden, state, cache = inputs.layer, inputs.hidden, inputs.per_forward, inputs.cache()
    attn, projection = layer.self_attn, inputs.per_forward["projection"]  # the family's HeadProjection
    normed = timer.run("input norm (T)", "norms", layer.input_layernorm, hidden)  # [1, T, D]
    query = timer.run("q_proj (T)", "attention: q/k/v", projection.queries, attn, normed)  # [1, H, T, hd]
    key, value = timer.run("k/v_proj (T)", "attention: q/k/v", projection.keys_values, attn, normed)
    cos, sin = state["rotary"]
    query, key = timer.run("RoPE (rotate)", "rope", lambda: (apply_rope(query, cos, sin), apply_rope(key, cos, sin)))
    key, value = timer.run("KV cache update", "cache", cache.update, key, value, attn.layer_idx)
    output, _ = timer.run("core attention (causal)", "attention: core", _attention_function(attn), attn, query, key,
                          value, state["mask"], dropout=0.0, scaling=attn.scaling)
    attn_out = timer.run("o_proj", "attention: o_proj",
                         lambda: attn.o_proj(output.reshape(*hidden.shape[:-1], -1).contiguous()))
    hidden = timer.run("residual (attention)", "residual", lambda: hidden + projection.after_attention(layer, attn_out))
    ffn_out = timer.run("FFN (T)", "ffn", layer.mlp,
                        timer.run("post-attention norm", "norms", layer.post_attention_layernorm, hidden))
    return timer.run("residual (FFN)", "residual", lambda: hidden + projection.after_mlp(layer, ffn_out))


# ----------------------------------------------------------------------------- per forward


def fresh_layout(model, args):
    """The benchmark's layout of the prompt on the device, with nothing derived from it yet."""
    input_ids = make_input_ids(model.config.vocab_size, args.text_tokens)  # [1, L]
    return cpu_layout(model.config, input_ids, args.crops, args.tokens_per_crop).to(args.device)


def proxyv_per_forward(model, hidden: torch.Tensor, args, timer: PartTimer) -> dict:
    """What `ProxyVDecoderModel.forward` builds once for all ProxyV layers: the plan, the entering proxies
    and RoPE's cos / sin of both streams."""
    decoder, layout = model.model, fresh_layout(model, args)
    plan = timer.run("plan: indices + mask (build_proxyv_plan)", "mask", decoder._proxyv_plan, layout, hidden.dtype)
    proxies, assignment = timer.run("entering proxies (gather_full, pool, arrange_proxies)", "proxies",
                                    decoder._entering_proxies, hidden, plan)  # [1, P, D], [N, G, n] or None
    rotary = timer.run("RoPE cos/sin (query + key streams)", "rope", decoder._stream_rotary, hidden, plan)
    start = model.config.proxyv_start_layer
    return {"plan": plan, "proxies": proxies, "assignment": assignment, "layout": layout, "rotary": rotary,
            "vision_mlp": decoder.vision_mlp_layers[args.start_layer - start]}


def baseline_per_forward(model, hidden: torch.Tensor, args, timer: PartTimer) -> dict:
    """What the decoder model's forward builds once for all layers: the causal mask and RoPE's cos / sin."""
    layout = fresh_layout(model, args)

    def mask():
        attention_mask = model.layout_attention_mask(layout, hidden.dtype)
        return create_causal_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                  past_key_values=DynamicCache(config=model.config), position_ids=layout.position_ids)

    causal = timer.run("causal mask", "mask", mask)
    rotary = timer.run("RoPE cos/sin", "rope", model.model.rotary_emb, hidden, layout.position_ids)
    return {"mask": causal, "rotary": rotary, "layout": layout,
            "projection": FAMILIES[args.family].family.projection}


# ----------------------------------------------------------------------------- rounds


@dataclasses.dataclass
class ProfiledLayer:
    """One layer to profile: its inputs, its real forward, its replay and what its forward builds once."""

    name: str  # "proxyv" or "baseline"
    inputs: LayerInputs
    forward: object  # LayerInputs -> output
    parts: object  # (LayerInputs, PartTimer) -> output
    per_forward: object  # (model, hidden, args, PartTimer) -> dict
    total: list = dataclasses.field(default_factory=list)  # seconds of the real forward, per round
    timer: PartTimer | None = None  # the parts' samples
    forward_timer: PartTimer | None = None  # the per-forward samples
    replay_exact: bool | None = None


def build_profiled_layers(args, dtype: torch.dtype) -> list[ProfiledLayer]:
    """The benchmark's ProxyV variant and baseline, layer `args.start_layer` of each, on the same hidden states."""
    spec = load_model_spec(args.model)
    variants = {v.name: v for v in build_variants(spec, [args.start_layer], args.layers, args.learn_proxy)}
    args.family, args.tokens_per_crop = spec.family, spec.tokens_per_crop
    sequence_length = args.text_tokens + args.crops * (spec.tokens_per_crop + 1)  # T: one newline per crop
    generator = torch.Generator().manual_seed(HIDDEN_SEED)
    hidden = torch.randn(1, sequence_length, spec.llava_values["hidden_size"], generator=generator)  # [1, T, D]
    hidden = hidden.to(args.device, dtype)
    untimed = PartTimer(args.device)
    untimed.record = False
    layers = []
    for name, forward, parts, per_forward in (("proxyv", proxyv_layer_forward, proxyv_layer_parts, proxyv_per_forward),
                                              ("baseline", baseline_layer_forward, baseline_layer_parts,
                                               baseline_per_forward)):
        model = _build(variants[name], args, dtype)
        inputs = LayerInputs(model, model.model.layers[args.start_layer], hidden, None, {})
        inputs.per_forward = per_forward(model, hidden, args, untimed)
        inputs.layout = inputs.per_forward["layout"]
        if inputs.layout.token_kind.shape[1] != sequence_length:
            raise ValueError(f"The layout has {inputs.layout.token_kind.shape[1]} tokens, expected {sequence_length}.")
        layers.append(ProfiledLayer(name, inputs, forward, parts, per_forward, timer=PartTimer(args.device),
                                    forward_timer=PartTimer(args.device)))
    return layers


def _build(variant: Variant, args, dtype: torch.dtype):
    return build_model(variant, args.device, dtype, args.attn_implementation)


def _same(output, replayed) -> bool:
    """Bit-for-bit equality of a layer's output and its replay's (tensors or tuples of them)."""
    outputs = output if isinstance(output, tuple) else (output,)
    replays = replayed if isinstance(replayed, tuple) else (replayed,)
    return len(outputs) == len(replays) and all(torch.equal(a, b) for a, b in zip(outputs, replays))


@torch.inference_mode()
def profile_rounds(layers: list[ProfiledLayer], args) -> None:
    """Warm-up rounds (the first one checks the replays), then timed rounds, each layer in turn."""
    for round_index in range(args.warmup + args.repeats):
        timed = round_index >= args.warmup
        for profiled in layers:
            inputs = profiled.inputs
            profiled.timer.record = profiled.forward_timer.record = timed
            profiled.per_forward(inputs.model, inputs.hidden, args, profiled.forward_timer)
            _sync(args.device)
            start = time.perf_counter()
            output = profiled.forward(inputs)
            _sync(args.device)
            if timed:
                profiled.total.append(time.perf_counter() - start)
            replayed = profiled.parts(inputs, profiled.timer)
            if profiled.replay_exact is None:
                profiled.replay_exact = _same(output, replayed)
                if not profiled.replay_exact:
                    logger.warning("The %s layer's replay does not reproduce its output: the layer changed and %s "
                                   "no longer follows it; its parts are not trustworthy.", profiled.name, __name__)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- results and table


def _rows(timer: PartTimer, total_ms: float | None) -> list[dict]:
    """One row per part: its group, median / min / max ms and share of the layer's median."""
    rows = []
    for name, samples in timer.samples.items():
        row = {"part": name, "group": timer.groups[name], **summarize(samples)}
        row["share"] = row["median_ms"] / total_ms if total_ms else None
        rows.append(row)
    return rows


def layer_result(profiled: ProfiledLayer) -> dict:
    """The JSON of one layer: its total, its parts (plus the unaccounted rest), the groups, per-forward parts."""
    total = summarize(profiled.total)
    parts = _rows(profiled.timer, total["median_ms"])
    unaccounted = total["median_ms"] - sum(row["median_ms"] for row in parts)
    parts.append({"part": UNACCOUNTED, "group": UNACCOUNTED, "median_ms": unaccounted, "min_ms": None,
                  "max_ms": None, "share": unaccounted / total["median_ms"]})
    groups = {}
    for row in parts:
        groups[row["group"]] = groups.get(row["group"], 0.0) + row["median_ms"]
    return {"total": total, "replay_exact": profiled.replay_exact, "parts": parts,
            "groups": [{"group": g, "median_ms": ms, "share": ms / total["median_ms"]} for g, ms in groups.items()],
            "per_forward": _rows(profiled.forward_timer, total["median_ms"])}


def _ms(row: dict) -> str:
    if row.get("min_ms") is None:
        return f"{row['median_ms']:.2f}"
    return f"{row['median_ms']:.2f} ({row['min_ms']:.2f}-{row['max_ms']:.2f})"


def _share(row: dict) -> str:
    return "-" if row["share"] is None else f"{100 * row['share']:.1f}%"


def format_tables(result: dict) -> str:
    """Per layer: a parts table, a groups table and what its forward builds once (share of one layer)."""
    out = []
    for name, layer in result["layers"].items():
        exact = "replay exact" if layer["replay_exact"] else "REPLAY DIFFERS FROM THE LAYER"
        out += [f"\n{name} layer {result['setting']['start_layer']}: {_ms(layer['total'])} ms ({exact})", "",
                "| part | group | ms median (min-max) | share of layer |", "|---|---|---|---|"]
        out += [f"| {row['part']} | {row['group']} | {_ms(row)} | {_share(row)} |" for row in layer["parts"]]
        out += ["", "| group | ms (sum of medians) | share of layer |", "|---|---|---|"]
        out += [f"| {row['group']} | {row['median_ms']:.2f} | {_share(row)} |" for row in layer["groups"]]
        out += ["", "| once per forward | ms median (min-max) | vs one layer |", "|---|---|---|"]
        out += [f"| {row['part']} | {_ms(row)} | {_share(row)} |" for row in layer["per_forward"]]
    if result.get("mask_build"):
        out += ["", "ProxyV plan built with each mask rendering:", "", format_mask_build(result["mask_build"])]
    return "\n".join(out)


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vicuna-7b", help="a preset name or a config.json / checkpoint folder path")
    parser.add_argument("--proxyv-start-layers", dest="start_layer", type=int, default=None,
                        help="the layer s to profile (ProxyV from s on); default: the middle layer")
    parser.add_argument("--layers", type=int, default=None, help="cut the LLM to this many layers")
    parser.add_argument("--crops", type=int, default=5, help="image crops (base + AnyRes tiles)")
    parser.add_argument("--text-tokens", type=int, default=50, help="text tokens around the image")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 | auto (fp32 off CUDA)")
    parser.add_argument("--attn-implementation", choices=ATTN_IMPLEMENTATIONS, default="sdpa")
    parser.add_argument("--learn-proxy", action="store_true", help="learned (non-spatial) proxies")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds: median, min and max")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before them (at least 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="write the results here")
    return parser.parse_args(argv)


def check_args(args) -> None:
    """Bad options are a `ValueError` naming the option."""
    if args.repeats < 1 or args.warmup < 1:
        raise ValueError(f"--repeats and --warmup must be >= 1 (the first warm-up round checks the replay), got "
                         f"--repeats {args.repeats} --warmup {args.warmup}.")
    if args.crops < 1 or args.text_tokens < 0:
        raise ValueError("--crops must be >= 1 and --text-tokens >= 0: a ProxyV layer needs image crops.")
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be >= 1.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available here; use --device cpu.")
    if args.attn_implementation == "flash_attention_2" and args.device != "cuda":
        raise ValueError("--attn-implementation flash_attention_2 needs --device cuda.")
    check_flex_device(args)
    spec = load_model_spec(args.model)
    depth = spec.num_layers if args.layers is None else args.layers
    if not 1 <= depth <= spec.num_layers:
        raise ValueError(f"--layers must be in [1, {spec.num_layers}] for {spec.name}, got {depth}.")
    if args.start_layer is None:
        args.start_layer = depth // 2
    if not 0 <= args.start_layer < depth:
        raise ValueError(f"--proxyv-start-layers must be one layer in [0, {depth - 1}] (a ProxyV layer of the "
                         f"{depth} layers), got {args.start_layer}.")
    if args.json is not None and not _json_folder_exists(args.json):
        raise ValueError(f"--json {args.json}: not a file in an existing folder.")


def _json_folder_exists(path: str) -> bool:
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.isdir(folder) and not os.path.isdir(path)


def run_profile(args) -> dict:
    """Profile both layers; returns the JSON-ready result."""
    check_args(args)
    dtype = resolve_dtype(args.dtype, args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    layers = build_profiled_layers(args, dtype)
    profile_rounds(layers, args)
    setting = {"model": args.model, "start_layer": args.start_layer, "layers": args.layers, "crops": args.crops,
               "text_tokens": args.text_tokens, "sequence_length": layers[0].inputs.hidden.shape[1],
               "device": args.device, "dtype": str(dtype).removeprefix("torch."),
               "attn_implementation": args.attn_implementation, "repeats": args.repeats, "warmup": args.warmup,
               "learn_proxy": args.learn_proxy, "threads": torch.get_num_threads(), "torch": torch.__version__,
               "load_average_1min": os.getloadavg()[0]}
    return {"setting": setting, "layers": {layer.name: layer_result(layer) for layer in layers},
            "mask_build": measure_mask_build(next(layer for layer in layers if layer.name == "proxyv").inputs.model.config,
                                             args.text_tokens, args.crops, args.tokens_per_crop, args.device, dtype,
                                             args.warmup, args.repeats)}


def main(argv=None) -> int:
    """The profile under the project's error policy (`llava.errors.run_main`)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        check_args(args)
    except UserError:
        raise
    except ValueError as error:
        raise UsageError(one_line(error)) from error
    result = run_profile(args)
    print(f"\nOne layer's prefill of {args.text_tokens} text tokens + {args.crops} crops "
          f"({result['setting']['sequence_length']} tokens), device {args.device}, "
          f"{result['setting']['dtype']}, {args.repeats} rounds:")
    print(format_tables(result))
    write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
