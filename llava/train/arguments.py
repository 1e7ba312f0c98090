"""Command-line arguments of `llava/train/train.py`, with the flag names LLaVA-NeXT users know.

Giving `--proxyv_start_layer N` alone turns ProxyV on (the authors' `--proxyv True` is accepted
too); leaving both out trains the baseline.
"""

from dataclasses import dataclass, field

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

    def proxyv_enabled(self) -> bool:
        if self.proxyv is False and self.proxyv_start_layer is not None:
            raise ValueError("--proxyv False contradicts --proxyv_start_layer; drop one of them.")
        return bool(self.proxyv) or self.proxyv_start_layer is not None


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
    remove_unused_columns: bool = False
    warmup_ratio: float | None = field(
        default=None, metadata={"help": "LLaVA's flag: warmup as a fraction of the steps (sets warmup_steps)"}
    )

    def __post_init__(self):
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
            self.warmup_steps = self.warmup_ratio
        super().__post_init__()
