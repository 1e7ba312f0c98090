"""`python -m llava.eval.prefill_benchmark`: prefill FLOPs, time and memory of the baseline vs ProxyV.

For each model (a preset or a config path, see `llava.eval.presets`) it measures the baseline and
ProxyV from each `--proxyv-start-layers` entry (or `paper`: floor(3L/8) and L/2 of the model's L
layers) on one sample: `--text-tokens` text tokens split around one image of `--crops` crops (random
ids, random pixels, random weights). Every variant is built from the model's own decoder family
(`llava.model.FAMILIES`: Llama, Mistral, Qwen2, Qwen3, Phi-3).

* FLOPs are always counted exactly with `torch.utils.flop_counter.FlopCounterMode` on a model built
  on the `meta` device (no weights allocated), stage by stage: vision tower, projector, decoder
  layers (LLM) and LM head. The LM head counts the last token's logits only (`logits_to_keep=1`),
  as a generation prefill does. Each row also carries the analytic count of `llava.eval.flops`.
* With `--device cpu|cuda` it also builds the model with random weights and times the prefill
  (`use_cache=True, logits_to_keep=1`), one training step (forward + backward, labels on the text,
  no optimizer) and one decoding step (one token over the prefill's KV cache), each the median of
  `--repeats` runs (default 5) after `--warmup` runs with their min and max, and records the peak
  memory of the prefill and the step. Variants run one after another; `--interleave` builds them all
  and alternates their runs, which keeps the comparison fair on a shared machine whose speed drifts,
  and pairs the runs of a round: each time reduction then also carries the min and max of the
  per-round reductions.

It prints a table (times as `median (min-max)`) and writes JSON `{"setting": {...}, "rows": [...]}`;
reductions are fractions relative to the baseline row of the same model, from the medians.
`llava.eval.layer_profile` splits one layer's time into its parts at the same setting.
"""

import argparse
import dataclasses
import json
import logging
import os
import resource
import statistics
import sys
import time

import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode
from transformers import DynamicCache

from llava.constants import IMAGE_TOKEN_INDEX
from llava.errors import UsageError, UserError, one_line, require_output_file, run_main
from llava.model import FAMILIES
from llava.model.backends import ATTN_IMPLEMENTATIONS
from llava.model.builder import resolve_dtype
from llava.model.language_model.families import FamilyClasses
from llava.model.layout import MultimodalLayout, build_multimodal_sequence

from .flops import analytic_prefill_flops
from .presets import ModelSpec, load_model_spec

logger = logging.getLogger(__name__)

DEVICES = ("meta", "cpu", "cuda")
FLOP_PARTS = ("vision_flops", "projector_flops", "llm_flops", "lm_head_flops")
LM_HEAD_NOTE = "logits of the last token only (logits_to_keep=1), as a prefill for generation computes"
INPUT_SEED = 0
DEFAULT_REPEATS = 5  # timed runs per phase; their min-max shows how far a shared machine's noise reaches


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row to measure: a named decoder variant with its config and model class.

    `name` is "baseline", "proxyv" or another variant's name; `start_layer` is the layer the variant
    starts from (None for the baseline), shown in the table's `s` column. `config` and `model_class`
    are the spec's family's (`llava.model.FAMILIES[spec.family]`).
    """

    spec: ModelSpec
    name: str
    config: object
    model_class: type
    start_layer: int | None = None


# ----------------------------------------------------------------------------- configs and inputs


PAPER_START_LAYERS = "paper"


def paper_start_layers(depth: int) -> list[int]:
    """The paper's Vicuna-7B settings s = 12 and s = 16 of 32 layers, as fractions of any depth:
    floor(3L/8) and L // 2 (e.g. 10 and 14 of Qwen2's 28 layers, 13 and 18 of Qwen3-8B's 36)."""
    return sorted({3 * depth // 8, depth // 2})


def _num_layers(spec: ModelSpec, layers: int | None, start_layers: list[int] | str) -> int:
    """The LLM depth to build; every start layer must fit (s = depth means no ProxyV layer)."""
    depth = spec.num_layers if layers is None else layers
    if not 1 <= depth <= spec.num_layers:
        raise ValueError(f"--layers must be in [1, {spec.num_layers}] for {spec.name}, got {depth}.")
    if start_layers == PAPER_START_LAYERS:
        return depth
    too_deep = [s for s in start_layers if not 0 <= s <= depth]
    if too_deep:
        where = f"--layers {depth}" if layers is not None else f"{spec.name}'s {depth} layers"
        raise ValueError(f"ProxyV start layer(s) {too_deep} out of range: with {where} a start layer must be "
                         f"in [0, {depth}].")
    return depth


@dataclasses.dataclass(frozen=True)
class VariantRequest:
    """What a variant family needs to build its rows for one model."""

    spec: ModelSpec
    values: dict  # LLaVA config values at the benchmarked depth
    start_layers: list[int]  # --proxyv-start-layers, resolved for this depth
    learn_proxy: bool

    @property
    def depth(self) -> int:
        return self.values["num_hidden_layers"]

    @property
    def classes(self) -> FamilyClasses:
        """The spec's family's config and model classes."""
        return FAMILIES[self.spec.family]


def proxyv_family(request: VariantRequest) -> list[Variant]:
    """ProxyV from each requested start layer."""
    spec, classes, variants = request.spec, request.classes, []
    for start in request.start_layers:
        config = classes.proxyv_config(**{**request.values, **spec.proxyv_options, "proxyv_start_layer": start,
                                          "learn_proxy": request.learn_proxy, "per_crop_token_len": spec.tokens_per_crop})
        variants.append(Variant(spec, "proxyv", config, classes.proxyv_causal_lm, start))
    return variants


PAPER_DEPTH = 32  # Vicuna-7B: the depth the paper's layer choices refer to
VISIONZIP_PAPER = (360, 40, 576)  # dominant, contextual, of a crop's 576 tokens
PYRAMID_DROP_PAPER = ([12, 20, 26], 0.5)


def visionzip_options(tokens_per_crop: int, setting: tuple[int, int, int] = VISIONZIP_PAPER) -> dict:
    """VisionZip's (dominant, contextual, of a crop's tokens) `setting` scaled to `tokens_per_crop`:
    the paper's 360 + 40 of 576 by default."""
    dominant, contextual, crop = setting
    return {"vision_token_reduction": "visionzip", "visionzip_dominant": max(1, round(dominant * tokens_per_crop / crop)),
            "visionzip_contextual": round(contextual * tokens_per_crop / crop)}


def _visionzip_options(spec: ModelSpec) -> dict:
    return visionzip_options(spec.tokens_per_crop)


def pyramid_drop_layers(depth: int) -> list[int]:
    """PyramidDrop's 12, 20, 26 of 32 layers scaled to `depth` as round(l * depth / 32), within [1, depth - 1].

    Raises ValueError for a decoder under 2 layers: there is no layer to drop after."""
    if depth < 2:
        raise ValueError(f"PyramidDrop needs a decoder of at least 2 layers, got {depth}.")
    return sorted({min(max(round(layer * depth / PAPER_DEPTH), 1), depth - 1) for layer in PYRAMID_DROP_PAPER[0]})


def visionzip_family(request: VariantRequest) -> list[Variant]:
    """VisionZip on the baseline decoder."""
    config = request.classes.config(**{**request.values, **_visionzip_options(request.spec)})
    return [Variant(request.spec, "visionzip", config, request.classes.causal_lm)]


def pyramid_drop_family(request: VariantRequest) -> list[Variant]:
    """PyramidDrop after 12, 20, 26 of 32 layers (scaled as round(l * depth / 32)), keeping 50% each time."""
    depth = request.depth
    if depth < 2:
        return []  # no layer to drop after
    config = request.classes.config(**{**request.values, "pyramid_drop_layers": pyramid_drop_layers(depth),
                                       "pyramid_drop_ratio": PYRAMID_DROP_PAPER[1]})
    return [Variant(request.spec, "pyramiddrop", config, request.classes.pyramid_drop_causal_lm)]


def visionzip_proxyv_family(request: VariantRequest) -> list[Variant]:
    """Non-spatial ProxyV from depth // 2 on VisionZip-reduced tokens."""
    spec, start, classes = request.spec, request.depth // 2, request.classes
    # VisionZip's kept tokens form no grid, so the guided update maps the proxies back by the learned
    # assignment, whatever the spec's release used (the authors' Phi-3 copied spatially).
    config = classes.proxyv_config(**{**request.values, **spec.proxyv_options, **_visionzip_options(spec),
                                      "learned_proxy_guidance": "assignment", "proxyv_start_layer": start,
                                      "learn_proxy": True, "per_crop_token_len": spec.tokens_per_crop})
    return [Variant(spec, "visionzip+proxyv", config, classes.proxyv_causal_lm, start)]


def study_family(variant: str):
    """The family of one of the paper's Section 3 study variants, from the middle layer (16 of 32)."""

    def family(request: VariantRequest) -> list[Variant]:
        spec, start, classes = request.spec, request.depth // 2, request.classes
        config = classes.proxyv_config(**{**request.values, **spec.proxyv_options, "proxyv_start_layer": start,
                                          "proxyv_variant": variant, "per_crop_token_len": spec.tokens_per_crop})
        return [Variant(spec, variant, config, classes.proxyv_causal_lm, start)]

    family.__doc__ = f"The study variant {variant} from depth // 2."
    return family


STUDY_VARIANTS = ("mask_vision_attention", "skip_vision_attention", "vision_mlp")

# Each family builds its rows at its paper setting (scaled to the depth when --layers cuts the LLM).
VARIANT_FAMILIES = {"proxyv": proxyv_family, "visionzip": visionzip_family, "pyramiddrop": pyramid_drop_family,
                    "visionzip+proxyv": visionzip_proxyv_family, **{name: study_family(name) for name in STUDY_VARIANTS}}


def _values_at_depth(spec: ModelSpec, depth: int) -> dict:
    """The spec's config values with the LLM cut to `depth` layers (per-layer lists cut with it)."""
    values = {**spec.llava_values, "num_hidden_layers": depth}
    if values.get("layer_types") is not None:  # Qwen2 / Qwen3 configs list every layer's attention type
        values["layer_types"] = list(values["layer_types"])[:depth]
    return values


def build_variants(spec: ModelSpec, start_layers: list[int] | str, layers: int | None = None,
                   learn_proxy: bool = False, families: tuple[str, ...] = ("proxyv",)) -> list[Variant]:
    """The baseline, then the rows of each family in `families`, all at the same LLM depth, in the
    spec's decoder family; `start_layers` "paper" means `paper_start_layers(depth)`."""
    unknown = [name for name in families if name not in VARIANT_FAMILIES]
    if unknown:
        raise ValueError(f"Unknown variant(s) {unknown}; choose from {', '.join(VARIANT_FAMILIES)} or 'all'.")
    depth = _num_layers(spec, layers, start_layers)
    if start_layers == PAPER_START_LAYERS:
        start_layers = paper_start_layers(depth)
    values = _values_at_depth(spec, depth)
    request = VariantRequest(spec, values, list(start_layers), learn_proxy)
    classes = request.classes
    variants = [Variant(spec, "baseline", classes.config(**values), classes.causal_lm)]
    for name in families:
        variants += VARIANT_FAMILIES[name](request)
    return variants


def make_input_ids(vocab_size: int, text_tokens: int) -> torch.Tensor:
    """[1, text + 1]: random text ids with one image placeholder between the two halves."""
    generator = torch.Generator().manual_seed(INPUT_SEED)
    before = text_tokens // 2
    text = torch.randint(4, vocab_size, (text_tokens,), generator=generator)
    placeholder = torch.tensor([IMAGE_TOKEN_INDEX])
    return torch.cat([text[:before], placeholder, text[before:]])[None]


def make_images(spec: ModelSpec, crops: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """[1, C, 3, S, S] random pixels (uninitialised on meta)."""
    shape = (1, crops, 3, spec.image_size, spec.image_size)
    if device == "meta":
        return torch.empty(shape, device="meta", dtype=dtype)
    generator = torch.Generator().manual_seed(INPUT_SEED)
    return torch.randn(shape, generator=generator).to(device, dtype)


def build_model(variant: Variant, device: str, dtype: torch.dtype, attn_implementation: str):
    """Random weights in `dtype` on `device` (nothing allocated on meta), in eval mode."""
    with torch.device(device):
        model = variant.model_class._from_config(variant.config, dtype=dtype, attn_implementation=attn_implementation)
    return model.eval()


# ----------------------------------------------------------------------------- FLOPs on meta


def _count(fn, *args, **kwargs):
    """(fn's output, FLOPs counted while it ran)."""
    with FlopCounterMode(display=False) as counter:
        output = fn(*args, **kwargs)
    return output, counter.get_total_flops()


def cpu_layout(config, input_ids: torch.Tensor, crops: int, tokens_per_crop: int) -> MultimodalLayout:
    """The package's layout of the prompt, built on CPU with 1-wide dummy embeddings.

    The layout step and the ProxyV plan read token ids and positions (`nonzero`, `.item()`), which
    meta tensors do not have; everything else runs on meta.
    """

    def zero_embedding(ids):  # [B, L] -> [B, L, 1]
        return torch.zeros(*ids.shape, 1)

    features = [torch.zeros(crops, tokens_per_crop, 1)]  # [C, g*g, 1]
    _, _, layout = build_multimodal_sequence(input_ids, None, None, features, zero_embedding, torch.zeros(1),
                                             padding_side="left", newline_scheme=config.image_newline_positions)
    return layout


def _decoder(model, hidden: torch.Tensor, layout_cpu: MultimodalLayout) -> torch.Tensor:
    """Decoder prefill on meta with a KV cache: [1, T, D] embeddings -> [1, T, D] final-normed states.

    `tests/eval/test_flops.py` checks that the counts equal those of the real forward on CPU.
    With a cache and no 2D mask, transformers needs no mask values (it lets SDPA run causally);
    the counter still counts the full T x T attention, as it does for any mask.
    """
    _static_rope_on_meta(model)
    # What the decoder derives from index values (ProxyV's plan, PyramidDrop's schedule) is built on
    # CPU, where those values exist, and travels to meta with the layout; the rest is the model's own forward.
    model.model.derive_from_layout(layout_cpu, hidden.dtype)
    layout = layout_cpu.to("meta")
    cache = DynamicCache(config=model.config)
    output = model.model(inputs_embeds=hidden, position_ids=layout.position_ids, past_key_values=cache,
                         use_cache=True, **model.decoder_layout_kwargs(layout))
    return output.last_hidden_state


def _static_rope_on_meta(model) -> None:
    """Let a meta model's dynamic-NTK RoPE (e.g. converted InternLM2.5) run as plain RoPE.

    transformers' dynamic RoPE compares the largest position id with its cached length before every
    call, which reads a value meta tensors do not have. Past that length it only rescales the
    rotary frequencies (element-wise, 0 FLOPs), so counting with the unscaled ones is exact.
    """
    for module in model.modules():
        if isinstance(getattr(module, "rope_type", None), str) and "dynamic" in module.rope_type:
            module.rope_type = "default"


@torch.no_grad()
def count_prefill_flops(model, input_ids: torch.Tensor, images: torch.Tensor) -> dict[str, int]:
    """FLOPs of one generation prefill of a meta `model`, stage by stage.

    input_ids: [1, L] on CPU with one image placeholder; images: [1, C, 3, S, S] on meta.
    """
    pixels = images[0]  # [C, 3, S, S]
    features, vision = _count(model.get_vision_tower(), pixels)  # [C, G, d_vis]
    projected, projector = _count(model.model.mm_projector, features)  # [C, G, D]
    layout = cpu_layout(model.config, input_ids, pixels.shape[0], projected.shape[1])
    hidden = torch.empty(1, layout.token_kind.shape[1], projected.shape[-1], device="meta", dtype=projected.dtype)
    last_hidden, llm = _count(_decoder, model, hidden, layout)  # [1, T, D]
    _, lm_head = _count(model.lm_head, last_hidden[:, -1:])  # logits_to_keep=1
    return {"vision_flops": vision, "projector_flops": projector, "llm_flops": llm, "lm_head_flops": lm_head}


# ----------------------------------------------------------------------------- memory


CLEAR_REFS = "/proc/self/clear_refs"
PROC_STATUS = "/proc/self/status"
PROC_CPU_STAT = "/proc/stat"


def _can_reset_peak_rss() -> bool:
    """Linux lets a process reset its peak RSS (VmHWM) by writing 5 to /proc/self/clear_refs."""
    return os.path.exists(PROC_STATUS) and os.access(CLEAR_REFS, os.W_OK)


def _status_bytes(field: str) -> int:
    """A `/proc/self/status` size field (e.g. VmRSS, VmHWM) in bytes."""
    with open(PROC_STATUS, encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"{PROC_STATUS} has no {field}.")


def memory_metric(device: str) -> str:
    """What the *_peak_memory_mb columns mean on `device`."""
    if device == "cuda":
        return ("largest over the timed runs of torch.cuda.max_memory_allocated during the run minus "
                "memory_allocated before it (activations, KV cache, gradients; weights excluded)")
    if _can_reset_peak_rss():
        return ("largest over the timed runs of the peak resident set size during the run (VmHWM, reset through "
                "/proc/self/clear_refs) minus the RSS before it: activations, KV cache, gradients and allocator "
                "workspaces, weights excluded; memory freed earlier but kept by the allocator can hide part of it")
    return ("growth of resource.getrusage().ru_maxrss (the process's lifetime peak RSS) during a timed run: a run "
            "that stays below an earlier peak reads 0, so only the first variant's figure is complete")


class PhaseMemory:
    """Peak memory of a block above what was in use when it began; `peak_mb` after the block."""

    def __init__(self, device: str):
        self.device = device
        self.reset_rss = device != "cuda" and _can_reset_peak_rss()
        self.peak_mb = None

    def _peak_bytes(self) -> int:
        if self.device == "cuda":
            return torch.cuda.max_memory_allocated()
        if self.reset_rss:
            return _status_bytes("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        elif self.reset_rss:
            with open(CLEAR_REFS, "w", encoding="ascii") as handle:
                handle.write("5")
            self.start = _status_bytes("VmRSS")
        else:
            self.start = self._peak_bytes()
        return self

    def __exit__(self, *exc_info):
        _sync(self.device)
        self.peak_mb = max(0, self._peak_bytes() - self.start) / 2**20
        return False


# ----------------------------------------------------------------------------- timing on a device


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class VariantRunner:
    """A variant built with random weights on a device, and its inputs; each method runs one step once."""

    def __init__(self, variant: Variant, args, dtype: torch.dtype):
        self.device = args.device
        self.model = build_model(variant, args.device, dtype, args.attn_implementation)
        tensors = [*self.model.parameters(), *self.model.buffers()]
        self.weights_mb = sum(t.numel() * t.element_size() for t in tensors) / 2**20
        self.input_ids = make_input_ids(variant.config.vocab_size, args.text_tokens).to(args.device)  # [1, L]
        self.images = make_images(variant.spec, args.crops, args.device, dtype)  # [1, C, 3, S, S]
        self.last_prefill = None
        self.decode_inputs = None

    @torch.inference_mode()
    def prefill(self) -> None:
        """A generation prefill: KV cache on, logits of the last token only."""
        self.last_prefill = self.model(input_ids=self.input_ids, images=self.images, use_cache=True, logits_to_keep=1)

    @torch.inference_mode()
    def decode(self) -> None:
        """One token over the last prefill's KV cache; the cache is cropped back afterwards."""
        if self.decode_inputs is None:
            cache = self.last_prefill.past_key_values
            length = cache.get_seq_length()  # T
            next_ids = self.last_prefill.logits[:, -1:].argmax(-1)  # [1, 1]
            position = torch.tensor([[length]], device=self.input_ids.device)  # text continues at T
            self.decode_inputs = {"input_ids": next_ids, "past_key_values": cache, "position_ids": position}
        self.model(**self.decode_inputs, use_cache=True, logits_to_keep=1)
        self.decode_inputs["past_key_values"].crop(-1)

    def train(self) -> None:
        """Forward + backward with labels on the text tokens (the placeholder's label is dropped), no optimizer."""
        self.model.train()
        labels = self.input_ids.clone()
        self.model(input_ids=self.input_ids, images=self.images, labels=labels, use_cache=False).loss.backward()
        self.model.zero_grad(set_to_none=True)
        self.model.eval()

    @property
    def sequence_length(self) -> int | None:
        return None if self.decode_inputs is None else int(self.decode_inputs["position_ids"])

    def close(self) -> None:
        self.model = self.last_prefill = self.decode_inputs = None
        if self.device == "cuda":
            torch.cuda.empty_cache()


PHASES = (  # runner method, time key, peak memory key
    ("prefill", "prefill_time_s", "prefill_peak_memory_mb"),
    ("decode", "decode_step_time_s", None),
    ("train", "train_step_time_s", "train_peak_memory_mb"),
)


def _timed_run(step, device: str) -> tuple[float, float]:
    """(wall time, peak memory above the start in MiB) of one `step()`."""
    with PhaseMemory(device) as memory:
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        elapsed = time.perf_counter() - start
    return elapsed, memory.peak_mb


def spread_key(time_key: str, statistic: str) -> str:
    """The key of a timed phase's `statistic` ("min", "max" or "samples"): prefill_time_s -> prefill_time_min_s."""
    return f"{time_key.removesuffix('_s')}_{statistic}_s"


def time_statistics(time_key: str, samples: list[float]) -> dict:
    """The median of a phase's timed runs under `time_key`, their min, max and every run in order."""
    return {time_key: statistics.median(samples), spread_key(time_key, "min"): min(samples),
            spread_key(time_key, "max"): max(samples), spread_key(time_key, "samples"): list(samples)}


def measure_phases(runners: list[VariantRunner], device: str, warmup: int, repeats: int) -> list[dict]:
    """Median, min, max (and every run's) time and the peak memory of every phase for every runner.

    Runs go round robin over the runners (a warm-up or timed run of each, then the next round), so
    with several runners a slow spell of a shared machine hits every variant alike.
    """
    results = [{} for _ in runners]
    for phase, time_key, memory_key in PHASES:
        for _ in range(warmup):
            for runner in runners:
                getattr(runner, phase)()
        runs = [[] for _ in runners]
        for _ in range(repeats):
            for runner, samples in zip(runners, runs):
                samples.append(_timed_run(getattr(runner, phase), device))
        for result, samples in zip(results, runs):
            result.update(time_statistics(time_key, [elapsed for elapsed, _ in samples]))
            if memory_key:
                result[memory_key] = max(peak for _, peak in samples)
    for runner, result in zip(runners, results):
        result.update(weights_mb=runner.weights_mb, sequence_length=runner.sequence_length)
    return results


def time_variants(variants: list[Variant], args, dtype: torch.dtype) -> list[dict]:
    """Timings of every variant: one after another, or all built at once and interleaved."""
    if args.interleave:
        groups = [variants]
    else:
        groups = [[variant] for variant in variants]
    results = []
    for group in groups:
        steal_before = _cpu_steal_s()
        runners = [VariantRunner(variant, args, dtype) for variant in group]
        measured = measure_phases(runners, args.device, args.warmup, args.repeats)
        for runner in runners:
            runner.close()
        steal = None if steal_before is None else _cpu_steal_s() - steal_before
        for result in measured:
            result.update(load_average_1min=os.getloadavg()[0], cpu_steal_s=steal)
        results += measured
    return results


def _cpu_steal_s() -> float | None:
    """CPU time the hypervisor gave to others, all cores together (Linux /proc/stat), to spot noisy timings."""
    if not os.path.exists(PROC_CPU_STAT):
        return None
    with open(PROC_CPU_STAT, encoding="ascii") as handle:
        fields = handle.readline().split()  # cpu user nice system idle iowait irq softirq steal ...
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- rows and table


TIME_KEYS = tuple(time_key for _, time_key, _ in PHASES)
TIMED_KEYS = ("weights_mb", "sequence_length", "prefill_peak_memory_mb", "train_peak_memory_mb", "load_average_1min",
              "cpu_steal_s", *(spread_key(key, statistic) if statistic else key for key in TIME_KEYS
                               for statistic in (None, "min", "max", "samples")))


def flops_row(variant: Variant, dtype: torch.dtype, text_tokens: int, crops: int) -> dict:
    """One JSON row with the FLOPs (meta counter + analytic) filled in and the timings left None."""
    meta_model = build_model(variant, "meta", dtype, "sdpa")
    input_ids = make_input_ids(variant.config.vocab_size, text_tokens)
    flops = count_prefill_flops(meta_model, input_ids, make_images(variant.spec, crops, "meta", dtype))
    analytic = analytic_prefill_flops(variant.config, text_tokens, crops)
    if analytic["llm_flops"] != flops["llm_flops"]:
        logger.warning("%s %s s=%s: counted LLM FLOPs %d differ from the analytic %d", variant.spec.name,
                       variant.name, variant.start_layer, flops["llm_flops"], analytic["llm_flops"])
    row = {"model": variant.spec.name, "variant": variant.name, "proxyv_start_layer": variant.start_layer,
           "num_layers": variant.config.num_hidden_layers, **flops, "total_flops": sum(flops.values()),
           "llm_flops_analytic": analytic["llm_flops"],
           "pyramid_drop_layers": getattr(variant.config, "pyramid_drop_layers", None)}
    return {**row, **dict.fromkeys(TIMED_KEYS)}


def _reduction(value, baseline):
    if value is None or not baseline:
        return None
    return 1.0 - value / baseline


REDUCTIONS = {"flops_reduction": "llm_flops", "total_flops_reduction": "total_flops",
              "time_reduction": "prefill_time_s", "train_time_reduction": "train_step_time_s",
              "decode_time_reduction": "decode_step_time_s", "prefill_memory_reduction": "prefill_peak_memory_mb"}
TIME_REDUCTIONS = {name: key for name, key in REDUCTIONS.items() if key in TIME_KEYS}


def paired_reductions(samples, baseline_samples) -> tuple[float | None, float | None]:
    """(min, max) over rounds of 1 - variant run / baseline run of the same round; None unless both have
    the same number of runs (interleaved runs: round i of every variant ran back to back)."""
    if not samples or not baseline_samples or len(samples) != len(baseline_samples):
        return None, None
    reductions = [1.0 - value / base for value, base in zip(samples, baseline_samples)]
    return min(reductions), max(reductions)


def add_reductions(rows: list[dict], paired: bool = False) -> None:
    """Fractions saved against the baseline row of the same model (0 for it, None where unmeasured),
    from the medians; with `paired` (interleaved runs) also each time reduction's min and max over
    the per-round ratios (`time_reduction_min`, `time_reduction_max`, ...)."""
    baselines = {row["model"]: row for row in rows if row["variant"] == "baseline"}
    for row in rows:
        baseline = baselines[row["model"]]
        for name, key in REDUCTIONS.items():
            row[name] = _reduction(row[key], baseline[key])
        for name, key in TIME_REDUCTIONS.items():
            samples = spread_key(key, "samples")
            pairs = paired and row is not baseline
            lowest, highest = paired_reductions(row.get(samples), baseline.get(samples)) if pairs else (None, None)
            row[f"{name}_min"], row[f"{name}_max"] = lowest, highest


def _fmt(value, scale: float = 1.0, digits: int = 2, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value / scale:.{digits}f}"


def _with_range(key: str, low_key: str, high_key: str, **fmt):
    """A cell formatter of a row: `key`'s value, then `(min-max)` where the row has both."""

    def cell(row: dict) -> str:
        text, low, high = _fmt(row.get(key), **fmt), row.get(low_key), row.get(high_key)
        if low is None or high is None:
            return text
        separator = " to " if min(low, high) < 0 else "-"  # "-2.5-3.1%" would read as a range from minus
        return f"{text} ({_fmt(low, **fmt).removesuffix('%')}{separator}{_fmt(high, **fmt)})"

    return cell


def _time_cell(key: str, **fmt):
    """A timed phase's median (min-max over the repeats)."""
    return _with_range(key, spread_key(key, "min"), spread_key(key, "max"), **fmt)


def _reduction_cell(name: str):
    """A time reduction from the medians (min-max of the paired per-round reductions)."""
    return _with_range(name, f"{name}_min", f"{name}_max", percent=True)


def _value_cell(key: str, formatter):
    return lambda row: formatter(row.get(key))


TABLE_COLUMNS = (  # header, key, cell formatter of a row
    ("model", "model", _value_cell("model", str)),
    ("variant", "variant", _value_cell("variant", str)),
    ("s", "proxyv_start_layer", _value_cell("proxyv_start_layer", lambda v: "-" if v is None else str(v))),
    ("LLM TFLOPs", "llm_flops", _value_cell("llm_flops", lambda v: _fmt(v, 1e12, 3))),
    ("LLM red.", "flops_reduction", _value_cell("flops_reduction", lambda v: _fmt(v, percent=True))),
    ("vision TF", "vision_flops", _value_cell("vision_flops", lambda v: _fmt(v, 1e12, 3))),
    ("proj. TF", "projector_flops", _value_cell("projector_flops", lambda v: _fmt(v, 1e12, 3))),
    ("head GF", "lm_head_flops", _value_cell("lm_head_flops", lambda v: _fmt(v, 1e9, 3))),
    ("total TF", "total_flops", _value_cell("total_flops", lambda v: _fmt(v, 1e12, 3))),
    ("total red.", "total_flops_reduction", _value_cell("total_flops_reduction", lambda v: _fmt(v, percent=True))),
    ("prefill s", "prefill_time_s", _time_cell("prefill_time_s", digits=3)),
    ("time red.", "time_reduction", _reduction_cell("time_reduction")),
    ("prefill MB", "prefill_peak_memory_mb", _value_cell("prefill_peak_memory_mb", lambda v: _fmt(v, digits=0))),
    ("train s", "train_step_time_s", _time_cell("train_step_time_s", digits=3)),
    ("train red.", "train_time_reduction", _reduction_cell("train_time_reduction")),
    ("train MB", "train_peak_memory_mb", _value_cell("train_peak_memory_mb", lambda v: _fmt(v, digits=0))),
    ("decode ms", "decode_step_time_s", _time_cell("decode_step_time_s", scale=1e-3, digits=1)),
    ("decode red.", "decode_time_reduction", _reduction_cell("decode_time_reduction")),
)


def format_table(result: dict) -> str:
    """A Markdown table of the rows (timing columns only when something was timed); timed phases
    and time reductions show their median with (min-max) where measured."""
    timed = any(row.get("prefill_time_s") is not None for row in result["rows"])
    columns = [c for c in TABLE_COLUMNS if timed or not c[1].startswith(("prefill_", "time_", "train", "decode"))]
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in result["rows"]:
        lines.append("| " + " | ".join(c[2](row) for c in columns) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def _start_layers(text: str) -> list[int] | str:
    """Comma-separated start layers, or "paper" (`paper_start_layers` of each model's depth)."""
    if text.strip() == PAPER_START_LAYERS:
        return PAPER_START_LAYERS
    return _int_list(text)


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from error


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="vicuna-7b",
                        help="preset name(s), comma-separated, or a config.json / checkpoint folder path")
    parser.add_argument("--proxyv-start-layers", type=_start_layers, default=[12, 16],
                        help="ProxyV start layers, comma-separated (the baseline is always measured), or\n"
                             "'paper': floor(3L/8) and L/2 of each model's L layers (12 and 16 of 32)")
    parser.add_argument("--variants", default="all",
                        help="comma-separated variant families besides the baseline, or 'all': "
                             + ", ".join(VARIANT_FAMILIES))
    parser.add_argument("--crops", type=int, default=5, help="image crops (base + AnyRes tiles)")
    parser.add_argument("--text-tokens", type=int, default=50, help="text tokens around the image")
    parser.add_argument("--device", choices=DEVICES, default="meta",
                        help="meta: count FLOPs only; cpu / cuda: also time with random weights")
    parser.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 | auto (fp32 off CUDA)")
    parser.add_argument("--attn-implementation", choices=ATTN_IMPLEMENTATIONS, default="sdpa")
    parser.add_argument("--layers", type=int, default=None, help="cut the LLM to this many layers (CPU timing)")
    parser.add_argument("--learn-proxy", action="store_true", help="learned (non-spatial) proxies")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help="timed runs per measurement: their median, min and max are reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before them")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--interleave", action="store_true",
                        help="build all variants of a model at once and alternate their runs, so a busy shared\n"
                             "machine slows them alike (needs memory for every variant's weights)")
    return parser.parse_args(argv)


def _check_args(args) -> None:
    if args.crops < 1 or args.text_tokens < 0 or args.repeats < 1 or args.warmup < 0:
        raise ValueError("--crops and --repeats must be >= 1, --text-tokens and --warmup >= 0.")
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be >= 1.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available here; use --device cpu or meta.")
    check_flex_device(args)
    if args.attn_implementation == "flash_attention_2":
        if args.device != "cuda":
            raise ValueError("--attn-implementation flash_attention_2 needs --device cuda.")
        if not transformers.utils.is_flash_attn_2_available():
            raise ValueError("--attn-implementation flash_attention_2: flash-attn is not installed (pip install "
                             "'proxyv[flash]').")


def check_flex_device(args) -> None:
    """flex_attention is timed on CUDA: on CPU it runs unfused and has no backward (`llava.model.backends`)."""
    if args.attn_implementation == "flex_attention" and args.device == "cpu":
        raise ValueError("--attn-implementation flex_attention is timed on CUDA: on CPU FlexAttention runs unfused "
                         "(torch's compiled CPU kernel is not used) and has no backward; time sdpa on CPU.")


def setting(args, specs: list[ModelSpec], dtype: torch.dtype) -> dict:
    """The JSON 'setting': everything that defines the numbers."""
    spec = specs[0]
    tokens = args.text_tokens + args.crops * (spec.tokens_per_crop + 1)
    return {
        "models": [s.name for s in specs], "model_arg": args.model, "text_tokens": args.text_tokens,
        "crops": args.crops, "tokens_per_crop": spec.tokens_per_crop, "sequence_length": tokens, "batch_size": 1,
        "variants": args.variants, "proxyv_start_layers": args.proxyv_start_layers, "learn_proxy": args.learn_proxy, "layers": args.layers,
        "device": args.device, "dtype": str(dtype).removeprefix("torch."),
        "attn_implementation": args.attn_implementation, "repeats": args.repeats, "warmup": args.warmup,
        "interleave": args.interleave,
        "lm_head": LM_HEAD_NOTE,
        "flops": "torch.utils.flop_counter.FlopCounterMode on meta, multiply-add = 2 FLOPs, matmuls/attention/"
                 "convolutions only, attention over the full query x key matrix (the same for every attention backend); llm_flops = decoder layers "
                 "(incl. ProxyV proxy creation and VisionMLPs), without embedding, final norm and LM head",
        "timing": None if args.device == "meta" else (
            "median wall time of the repeats (*_min_s / *_max_s: their range, *_samples_s: every run in order); "
            "prefill with use_cache=True; variants "
            + ("interleaved run by run; time reductions from the medians, *_reduction_min / *_max over the "
               "per-round ratios to the baseline" if args.interleave else "one after another")
            + "; load_average_1min (at the end) and cpu_steal_s (during the timing) flag competing work"),
        "memory": None if args.device == "meta" else memory_metric(args.device),
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
    }


def prepare(args) -> tuple[list[ModelSpec], list[list[Variant]], torch.dtype]:
    """Check the arguments and build every model's variant configs; bad input is a `ValueError`."""
    _check_args(args)
    specs = [load_model_spec(name.strip()) for name in args.model.split(",") if name.strip()]
    if not specs:
        raise ValueError("--model names no model.")
    families = tuple(VARIANT_FAMILIES) if args.variants.strip() == "all" else \
        tuple(name.strip() for name in args.variants.split(",") if name.strip())
    variants = [build_variants(spec, args.proxyv_start_layers, args.layers, args.learn_proxy, families)
                for spec in specs]
    return specs, variants, resolve_dtype(args.dtype, args.device)


def run_benchmark(args) -> dict:
    """Measure every model and variant; returns the JSON-ready result."""
    specs, variants_per_model, dtype = prepare(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = []
    for variants in variants_per_model:
        logger.info("Counting FLOPs of %s on meta", variants[0].spec.name)
        model_rows = [flops_row(variant, dtype, args.text_tokens, args.crops) for variant in variants]
        if args.device != "meta":
            logger.info("Timing %d variant(s) of %s on %s", len(variants), variants[0].spec.name, args.device)
            for row, timed in zip(model_rows, time_variants(variants, args, dtype)):
                row.update(timed)
        rows += model_rows
    add_reductions(rows, paired=args.interleave)
    return {"setting": setting(args, specs, dtype), "rows": rows}


def write_json(result: dict, path: str | None) -> None:
    """Write `result` to `path` (nothing without one) and say so."""
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
        print(f"wrote {path}")


def main(argv=None) -> int:
    """The benchmark under the project's error policy (`llava.errors.run_main`)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.json is not None:
        require_output_file(args.json, "--json")
    try:
        prepare(args)
    except UserError:
        raise
    except ValueError as error:  # the configs' own checks of the options
        raise UsageError(one_line(error)) from error
    result = run_benchmark(args)
    print(f"\nPrefill of {args.text_tokens} text tokens + {args.crops} crops "
          f"({result['setting']['sequence_length']} tokens), device {args.device}; LM head: {LM_HEAD_NOTE}.")
    print(format_table(result))
    write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
