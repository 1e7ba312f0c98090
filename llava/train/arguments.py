"""Command-line arguments of `llava/train/train.py`, with the flag names LLaVA-NeXT users know.

Giving `--proxyv_start_layer N` alone turns ProxyV on (the authors' `--proxyv True` is accepted
too); leaving both out trains the baseline. `--proxyv_variant` picks one of the paper's study
variants from that layer instead (`--vision_mask_ratio` sets the layer for the masking study).

Option values that cannot work are refused when the arguments are parsed (`__post_init__`), as
`llava.errors.UsageError`s naming the flag, before anything is loaded: an unknown `--version`
template or choice, malformed `--image_grid_pinpoints`, a `--deepspeed` file that is not there
(`DamagedInputError` when it is not JSON), an `--output_dir` that is a file.
"""

import importlib.util
import json
import re
from dataclasses import dataclass, field

import torch
import transformers

from llava.errors import DamagedInputError, UsageError, read_json_file, require_output_folder, require_path
from llava.model.backends import ATTN_IMPLEMENTATIONS

NO_REDUCTION = (None, "", "none")
LORA_BIAS_CHOICES = ("none", "all", "lora_only")


def _check_choice(option: str, value, choices) -> None:
    if value not in choices:
        raise UsageError(f"{option} {value!r} is not one of: {', '.join(str(c) for c in choices)}.")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "the language model (or a LLaVA checkpoint to continue)"})
    version: str = field(default="v1", metadata={"help": "conversation template, e.g. plain (stage 1), v1"})
    vision_tower: str | None = field(default=None, metadata={"help": "CLIP path or hub name"})
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    mm_projector_type: str = "mlp2x_gelu"
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
    mm_patch_merge_type: str = "flat_newline"
    mm_tunable_parts: str | None = field(
        default=None,
        metadata={"help": "comma list of mm_mlp_adapter, mm_vision_mlp, mm_language_model, mm_vision_tower"},
    )
    pretrain_mm_mlp_adapter: str | None = field(default=None, metadata={"help": "stage-1 mm_projector.bin"})
    attn_implementation: str = field(default="sdpa", metadata={"help": ", ".join(ATTN_IMPLEMENTATIONS)})
    proxyv: bool | None = field(default=None, metadata={"help": "the authors' switch; --proxyv_start_layer suffices"})
    proxyv_start_layer: int | None = field(default=None, metadata={"help": "first ProxyV layer; turns ProxyV on"})
    proxyv_reduce_factor: int = 4
    per_crop_token_len: int | None = field(default=None, metadata={"help": "g*g; checked against the tower"})
    max_num_image_crops: int = 5
    learn_proxy: bool = False
    hidden_size_reduce_factor: int | None = None
    proxyv_variant: str = field(
        default="proxyv",
        metadata={"help": "proxyv, or a study variant from --proxyv_start_layer: mask_vision_attention, "
                          "skip_vision_attention, vision_mlp"},
    )
    vision_mask_ratio: float | None = field(
        default=None, metadata={"help": "mask_vision_attention: fraction of layers masked, from the top (sets s)"}
    )
    vision_token_reduction: str | None = field(default=None, metadata={"help": "visionzip, or none"})
    visionzip_dominant: int = field(default=360, metadata={"help": "VisionZip: dominant tokens per crop"})
    visionzip_contextual: int = field(default=40, metadata={"help": "VisionZip: merged contextual tokens per crop"})
    pyramid_drop_layers: str | None = field(
        default=None, metadata={"help": "PyramidDrop: comma list of layer counts after which vision tokens drop, e.g. 12,20,26"}
    )
    pyramid_drop_ratio: float = field(default=0.5, metadata={"help": "PyramidDrop: fraction of vision tokens kept per drop"})

    def __post_init__(self):
        from llava.model.image_merge import FLAT_NEWLINE, LLAVA_NEXT_MERGE_TYPES
        from llava.model.proxyv.variants import PROXYV_VARIANTS
        from llava.model.reduction.visionzip import VISION_TOKEN_REDUCTIONS
        from llava.train.check_data import check_template

        check_template(self.version)
        _check_choice("--attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        if self.attn_implementation == "flex_attention" and not torch.cuda.is_available():
            raise UsageError("--attn_implementation flex_attention trains on CUDA only (FlexAttention has no backward "
                             "on CPU); on CPU use sdpa.")
        _check_choice("--proxyv_variant", self.proxyv_variant, PROXYV_VARIANTS)
        if self.mm_patch_merge_type in LLAVA_NEXT_MERGE_TYPES:
            raise UsageError(f"--mm_patch_merge_type {self.mm_patch_merge_type}: training builds the "
                             f"'{FLAT_NEWLINE}' layout (each crop's tokens, then a newline; what ProxyV and the "
                             f"authors' release use); LLaVA-NeXT's layouts are for running its official checkpoints. "
                             f"Pass --mm_patch_merge_type {FLAT_NEWLINE} or leave it out.")
        _check_choice("--mm_patch_merge_type", self.mm_patch_merge_type, (FLAT_NEWLINE,))
        if self.vision_token_reduction not in NO_REDUCTION:
            _check_choice("--vision_token_reduction", self.vision_token_reduction, (*VISION_TOKEN_REDUCTIONS, "none"))
        projector = self.mm_projector_type
        match = re.fullmatch(r"mlp(\d+)x_gelu", projector or "")
        if projector not in ("linear", "identity") and not (match and int(match.group(1)) >= 1):
            raise UsageError(f"--mm_projector_type {projector!r} is not a projector; use linear, identity or "
                             "mlpNx_gelu (e.g. mlp2x_gelu).")
        if self.vision_mask_ratio is not None and not 0 <= self.vision_mask_ratio <= 1:
            raise UsageError(f"--vision_mask_ratio must be in [0, 1], got {self.vision_mask_ratio}.")
        if self.proxyv_start_layer is not None and self.proxyv_start_layer < 0:
            raise UsageError(f"--proxyv_start_layer must be >= 0, got {self.proxyv_start_layer}.")

    def token_reduction_options(self) -> dict:
        """The VisionZip / PyramidDrop config fields these flags ask for (validated by the config);
        empty for a reduction that is not asked for, so a checkpoint's own setting stays."""
        options = {}
        if self.vision_token_reduction in NO_REDUCTION and (self.visionzip_dominant, self.visionzip_contextual) != (
                360, 40):
            raise UsageError("--visionzip_dominant/--visionzip_contextual need --vision_token_reduction visionzip.")
        if self.pyramid_drop_layers in NO_REDUCTION and self.pyramid_drop_ratio != 0.5:
            raise UsageError("--pyramid_drop_ratio needs --pyramid_drop_layers (e.g. 12,20,26).")
        if self.vision_token_reduction not in NO_REDUCTION:
            options.update(vision_token_reduction=self.vision_token_reduction, visionzip_dominant=self.visionzip_dominant,
                           visionzip_contextual=self.visionzip_contextual)
        if self.pyramid_drop_layers not in NO_REDUCTION:
            try:
                layers = [int(part) for part in self.pyramid_drop_layers.split(",")]
            except ValueError as error:
                raise UsageError(f"--pyramid_drop_layers must be comma-separated integers, got "
                                 f"'{self.pyramid_drop_layers}'.") from error
            options.update(pyramid_drop_layers=layers, pyramid_drop_ratio=self.pyramid_drop_ratio)
        return options

    def proxyv_enabled(self) -> bool:
        if self.proxyv is False and self.proxyv_start_layer is not None:
            raise UsageError("--proxyv False contradicts --proxyv_start_layer; drop one of them.")
        if self.proxyv is False and (self.proxyv_variant != "proxyv" or self.vision_mask_ratio is not None):
            raise UsageError("--proxyv False contradicts --proxyv_variant / --vision_mask_ratio; drop one of them.")
        return (bool(self.proxyv) or self.proxyv_start_layer is not None or self.proxyv_variant != "proxyv"
                or self.vision_mask_ratio is not None)


@dataclass
class DataArguments:
    data_path: str = field(metadata={"help": "comma-separated LLaVA .json / .jsonl files"})
    image_folder: str | None = None
    lazy_preprocess: bool = field(default=True, metadata={"help": "accepted for LLaVA compatibility; always lazy"})
    is_multimodal: bool = True
    image_aspect_ratio: str = "anyres"
    image_grid_pinpoints: str | None = field(
        default=None, metadata={"help": "AnyRes grids: [[336,672],[672,336],...] or (1x1),...,(3x3)"})

    def __post_init__(self):
        from llava.model.language_model.llava_decoder import IMAGE_ASPECT_RATIOS
        from llava.train.check_data import parse_grid_pinpoints_option

        _check_choice("--image_aspect_ratio", self.image_aspect_ratio, IMAGE_ASPECT_RATIOS)
        self.image_grid_pinpoints = parse_grid_pinpoints_option(self.image_grid_pinpoints)


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    model_max_length: int = field(default=2048, metadata={"help": "longest expanded sequence (images included)"})
    group_by_modality_length: bool = False
    mm_projector_lr: float | None = None
    mm_vision_mlp_lr: float | None = None
    max_bad_sample_fraction: float = field(
        default=0.01, metadata={"help": "stop when an epoch skips more than this fraction of records as unusable"}
    )
    remove_unused_columns: bool = False
    warmup_ratio: float | None = field(
        default=None, metadata={"help": "LLaVA's flag: warmup as a fraction of the steps (sets warmup_steps)"}
    )
    lora_enable: bool = field(default=False, metadata={"help": "train the language model through LoRA adapters"})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA branch's input"})
    lora_bias: str = field(default="none", metadata={"help": "none, all or lora_only: which biases train with LoRA"})
    bits: int = field(default=16, metadata={"help": "16; or 8 / 4 for QLoRA (CUDA + bitsandbytes, with --lora_enable)"})

    def __post_init__(self):
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise UsageError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
            self.warmup_steps = self.warmup_ratio
        for option in ("model_max_length", "per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, option) < 1:
                raise UsageError(f"--{option} must be at least 1, got {getattr(self, option)}.")
        if not self.learning_rate >= 0 or self.learning_rate == float("inf"):
            raise UsageError(f"--learning_rate must be a number >= 0, got {self.learning_rate}.")
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise UsageError(f"--num_train_epochs must be > 0 (or give --max_steps), got {self.num_train_epochs}.")
        if not 0 <= self.max_bad_sample_fraction <= 1:
            raise UsageError(f"--max_bad_sample_fraction must be in [0, 1], got {self.max_bad_sample_fraction}.")
        if self.output_dir:
            require_output_folder(self.output_dir, "--output_dir", "a folder (new or to resume in)")
        self._check_deepspeed_config()
        self._check_precision_without_cuda()
        self._check_lora_options()
        super().__post_init__()

    def _check_lora_options(self) -> None:
        """LoRA's numbers in range; QLoRA (--bits 4/8) only with LoRA, on CUDA, with bitsandbytes."""
        _check_choice("--lora_bias", self.lora_bias, LORA_BIAS_CHOICES)
        _check_choice("--bits", self.bits, (16, 8, 4))
        if self.lora_r < 1 or self.lora_alpha <= 0:
            raise UsageError(f"--lora_r must be at least 1 and --lora_alpha above 0, got {self.lora_r} and "
                             f"{self.lora_alpha}.")
        if not 0 <= self.lora_dropout < 1:
            raise UsageError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if self.bits == 16:
            return
        if not self.lora_enable:
            raise UsageError(f"--bits {self.bits} quantizes the frozen language model for QLoRA; add --lora_enable "
                             "True (full fine-tuning cannot train quantized weights), or drop --bits.")
        if not torch.cuda.is_available():
            raise UsageError(f"--bits {self.bits} (QLoRA) needs a CUDA GPU with bitsandbytes; on CPU train LoRA in "
                             "full precision: drop --bits.")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UsageError(f"--bits {self.bits} (QLoRA) needs bitsandbytes: pip install bitsandbytes.")

    def _check_deepspeed_config(self) -> None:
        """`--deepspeed` names a JSON file (or is inline JSON); checked before transformers reads it."""
        config = self.deepspeed
        if not isinstance(config, str) or not config:
            return
        if config.lstrip().startswith("{"):
            try:
                parsed = json.loads(config)
            except json.JSONDecodeError as error:
                raise UsageError(f"--deepspeed: the inline JSON config is not valid JSON ({error.msg} at column "
                                 f"{error.colno}).") from error
        else:
            path = require_path(config, "--deepspeed", "file")
            parsed = read_json_file(path, "--deepspeed config")
        if not isinstance(parsed, dict):
            raise DamagedInputError(f"--deepspeed config {config} holds a JSON {type(parsed).__name__}, not an "
                                    "object of DeepSpeed settings (e.g. scripts/zero2.json).")

    def _check_precision_without_cuda(self) -> None:
        """fp16 and tf32 need a GPU; bf16 on CPU needs --use_cpu (one process, no DeepSpeed)."""
        if torch.cuda.is_available():
            return
        if self.fp16:
            raise UsageError("--fp16 needs a CUDA GPU. On CPU train in float32 (no precision flag) or in "
                             "bfloat16 with --bf16 True --use_cpu True.")
        if self.tf32:
            raise UsageError("--tf32 is a CUDA (Ampere+) setting; drop it on CPU.")
        if self.bf16 and not self.use_cpu:
            raise UsageError("--bf16 on a machine without CUDA needs --use_cpu True (one process, without "
                             "--deepspeed); or drop --bf16 to train in float32.")
