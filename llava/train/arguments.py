"""Command-line arguments of `llava/train/train.py`, with the flag names LLaVA-NeXT users know.

Giving `--proxyv_start_layer N` alone turns ProxyV on (the authors' `--proxyv True` is accepted
too); leaving both out trains the baseline. `--proxyv_variant` picks one of the paper's study
variants from that layer instead (`--vision_mask_ratio` sets the layer for the masking study).
"""

from dataclasses import dataclass, field

import torch
import transformers


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
    mm_patch_merge_type: str = "spatial_unpad"
    mm_tunable_parts: str | None = field(
        default=None,
        metadata={"help": "comma list of mm_mlp_adapter, mm_vision_mlp, mm_language_model, mm_vision_tower"},
    )
    pretrain_mm_mlp_adapter: str | None = field(default=None, metadata={"help": "stage-1 mm_projector.bin"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "eager, sdpa or flash_attention_2"})
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

    def token_reduction_options(self) -> dict:
        """The VisionZip / PyramidDrop config fields these flags ask for (validated by the config);
        empty for a reduction that is not asked for, so a checkpoint's own setting stays."""
        options = {}
        if self.vision_token_reduction in (None, "", "none") and (self.visionzip_dominant, self.visionzip_contextual) != (
                360, 40):
            raise ValueError("--visionzip_dominant/--visionzip_contextual need --vision_token_reduction visionzip.")
        if self.pyramid_drop_layers in (None, "", "none") and self.pyramid_drop_ratio != 0.5:
            raise ValueError("--pyramid_drop_ratio needs --pyramid_drop_layers (e.g. 12,20,26).")
        if self.vision_token_reduction not in (None, "", "none"):
            options.update(vision_token_reduction=self.vision_token_reduction, visionzip_dominant=self.visionzip_dominant,
                           visionzip_contextual=self.visionzip_contextual)
        if self.pyramid_drop_layers not in (None, "", "none"):
            try:
                layers = [int(part) for part in self.pyramid_drop_layers.split(",")]
            except ValueError as error:
                raise ValueError(f"--pyramid_drop_layers must be comma-separated integers, got "
                                 f"'{self.pyramid_drop_layers}'.") from error
            options.update(pyramid_drop_layers=layers, pyramid_drop_ratio=self.pyramid_drop_ratio)
        return options

    def proxyv_enabled(self) -> bool:
        if self.proxyv is False and self.proxyv_start_layer is not None:
            raise ValueError("--proxyv False contradicts --proxyv_start_layer; drop one of them.")
        if self.proxyv is False and (self.proxyv_variant != "proxyv" or self.vision_mask_ratio is not None):
            raise ValueError("--proxyv False contradicts --proxyv_variant / --vision_mask_ratio; drop one of them.")
        return (bool(self.proxyv) or self.proxyv_start_layer is not None or self.proxyv_variant != "proxyv"
                or self.vision_mask_ratio is not None)


@dataclass
class DataArguments:
    data_path: str = field(metadata={"help": "comma-separated LLaVA .json / .jsonl files"})
    image_folder: str | None = None
    lazy_preprocess: bool = field(default=True, metadata={"help": "accepted for LLaVA compatibility; always lazy"})
    is_multimodal: bool = True
    image_aspect_ratio: str = "anyres"
    image_grid_pinpoints: str | None = None


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

    def __post_init__(self):
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
            self.warmup_steps = self.warmup_ratio
        self._check_precision_without_cuda()
        super().__post_init__()

    def _check_precision_without_cuda(self) -> None:
        """fp16 and tf32 need a GPU; bf16 on CPU needs --use_cpu (one process, no DeepSpeed)."""
        if torch.cuda.is_available():
            return
        if self.fp16:
            raise ValueError("--fp16 needs a CUDA GPU. On CPU train in float32 (no precision flag) or in "
                             "bfloat16 with --bf16 True --use_cpu True.")
        if self.tf32:
            raise ValueError("--tf32 is a CUDA (Ampere+) setting; drop it on CPU.")
        if self.bf16 and not self.use_cpu:
            raise ValueError("--bf16 on a machine without CUDA needs --use_cpu True (one process, without "
                             "--deepspeed); or drop --bf16 to train in float32.")
