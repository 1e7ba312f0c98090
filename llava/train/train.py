"""Training entry point: `python llava/train/train.py ...` or `torchrun ... llava/train/train.py ...`.

Stage 1 (`--version plain --mm_tunable_parts mm_mlp_adapter,mm_vision_mlp`) trains the projector
and ProxyV's modules and writes `mm_projector.bin`; stage 2 loads it with
`--pretrain_mm_mlp_adapter` and trains the LLM too, ending in a consolidated checkpoint that
`load_pretrained_model` and the CLI open directly. DeepSpeed comes in through `--deepspeed`.
"""

import ast
import logging
import os
import sys

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava.model import family_for_model_type
from llava.model.assemble import build_llava_from_llm
from llava.model.builder import load_image_processor
from llava.model.model_registry import causal_lm_class_for_config, config_for_class
from llava.model.projector_weights import load_mm_projector_weights
from llava.model.proxyv.study import start_layer_for_mask_ratio
from llava.model.zero3_params import is_partitioned
from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments
from llava.train.check_data import TrainingSetupError, check_training_paths
from llava.train.checkpoints import last_complete_checkpoint
from llava.train.data import DataCollatorForSupervisedDataset, LazySupervisedDataset, load_records
from llava.train.trainer import LLaVATrainer
from llava.train.tunable import (
    apply_tunable_parts,
    multimodal_prefixes,
    parse_tunable_parts,
    trains_multimodal_only,
)

logger = logging.getLogger("llava.train")


def _dtype(training_args) -> torch.dtype:
    if training_args.bf16:
        return torch.bfloat16
    if training_args.fp16:
        return torch.float16
    return torch.float32


def _multimodal_options(model_args, data_args, training_args) -> dict:
    pinpoints = data_args.image_grid_pinpoints
    options = {
        "mm_vision_select_layer": model_args.mm_vision_select_layer,
        "mm_vision_select_feature": model_args.mm_vision_select_feature,
        "mm_projector_type": model_args.mm_projector_type,
        "mm_patch_merge_type": model_args.mm_patch_merge_type,
        "mm_use_im_start_end": model_args.mm_use_im_start_end,
        "mm_use_im_patch_token": model_args.mm_use_im_patch_token,
        "image_aspect_ratio": data_args.image_aspect_ratio,
        "tokenizer_model_max_length": training_args.model_max_length,
        "tokenizer_padding_side": "right",
    }
    if pinpoints:
        options["image_grid_pinpoints"] = ast.literal_eval(pinpoints) if isinstance(pinpoints, str) else pinpoints
    options.update(model_args.token_reduction_options())
    if model_args.proxyv_enabled():
        options.update(
            proxyv_reduce_factor=model_args.proxyv_reduce_factor,
            max_num_image_crops=model_args.max_num_image_crops,
            learn_proxy=model_args.learn_proxy,
            hidden_size_reduce_factor=model_args.hidden_size_reduce_factor,
            proxyv_variant=model_args.proxyv_variant,
            vision_mask_ratio=model_args.vision_mask_ratio,
        )
    return options


def _with_token_reduction(config, model_args):
    """A LLaVA checkpoint's config with the VisionZip / PyramidDrop flags applied, when any is given."""
    options = model_args.token_reduction_options()
    if not options:
        return config
    values = {key: value for key, value in config.to_dict().items() if key != "model_type"}
    return type(config)(**{**values, **options})


def _check_checkpoint_variant(config, model_args) -> None:
    """A LLaVA checkpoint keeps its own decoder; a different --proxyv_variant would be silently lost."""
    wanted, has = model_args.proxyv_variant, getattr(config, "proxyv_variant", "proxyv")
    if wanted != "proxyv" and wanted != has:
        raise ValueError(f"--proxyv_variant {wanted} applies when training from a language model (+ stage-1 "
                         f"projector); the checkpoint {model_args.model_name_or_path} has proxyv_variant '{has}'. "
                         "Start from the LLM with --pretrain_mm_mlp_adapter, or drop --proxyv_variant.")


def build_model(model_args, data_args, training_args):
    """A fresh LLaVA from an LLM + tower, or an existing LLaVA checkpoint to continue training."""
    dtype = _dtype(training_args)
    source_config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    if family_for_model_type(source_config.model_type) is not None:  # a LLaVA checkpoint of any family
        _check_checkpoint_variant(source_config, model_args)
        source_config = _with_token_reduction(source_config, model_args)
        model_class = causal_lm_class_for_config(source_config)
        config = config_for_class(source_config, model_class)
        model = model_class.from_pretrained(model_args.model_name_or_path, config=config, dtype=dtype,
                                            attn_implementation=model_args.attn_implementation)
    else:
        if not model_args.vision_tower:
            raise ValueError("--vision_tower is required when --model_name_or_path is a plain language model.")
        start = model_args.proxyv_start_layer
        if model_args.proxyv_enabled() and start is None and model_args.vision_mask_ratio is not None:
            start = start_layer_for_mask_ratio(model_args.vision_mask_ratio, source_config.num_hidden_layers)
        elif model_args.proxyv_enabled() and start is None:
            start = source_config.num_hidden_layers // 2
            logger.info("--proxyv True without --proxyv_start_layer: starting at the middle layer %d", start)
        model = build_llava_from_llm(model_args.model_name_or_path, model_args.vision_tower, start, dtype=dtype,
                                     attn_implementation=model_args.attn_implementation,
                                     **_multimodal_options(model_args, data_args, training_args))
    _check_crop_geometry(model, model_args)
    model.config.conv_template = model_args.version
    model.config.use_cache = False
    return model


def _check_crop_geometry(model, model_args) -> None:
    tower = model.get_vision_tower()
    if model_args.per_crop_token_len is not None and model_args.per_crop_token_len != tower.num_patches:
        raise ValueError(
            f"--per_crop_token_len {model_args.per_crop_token_len} does not match the vision tower's "
            f"{tower.num_patches} patches per crop."
        )
    if getattr(model.config, "proxyv", None):
        model.config.per_crop_token_len = tower.num_patches


def resume_checkpoint(training_args) -> str | None:
    """`--resume_from_checkpoint`, or the newest complete checkpoint already in the output folder."""
    if training_args.resume_from_checkpoint:
        if not os.path.isdir(training_args.resume_from_checkpoint):
            raise FileNotFoundError(f"--resume_from_checkpoint {training_args.resume_from_checkpoint} is not a "
                                    "folder; give a checkpoint-N folder or leave the flag out to use the newest.")
        return training_args.resume_from_checkpoint
    last = last_complete_checkpoint(training_args.output_dir)
    if last:
        logger.info("Resuming from %s", last)
    return last


def _log_partitioning(model, world_size: int) -> None:
    """Say how ZeRO-3 split the parameters: how many tensors, and how many values this rank holds."""
    partitioned = [p for p in model.parameters() if is_partitioned(p)]
    if partitioned:
        held, total = sum(p.ds_tensor.numel() for p in partitioned), sum(p.ds_numel for p in partitioned)
        logger.info("DeepSpeed ZeRO-3: %d of %d parameter tensors are partitioned across %d process(es); "
                    "this rank holds %d of their %d values", len(partitioned), len(list(model.parameters())),
                    world_size, held, total)


def train(argv=None) -> None:
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    check_training_paths(model_args.model_name_or_path, model_args.vision_tower, data_args.data_path,
                         data_args.image_folder)
    if training_args.save_total_limit == 1 and training_args.save_strategy != "no":
        logger.warning("--save_total_limit 1: transformers deletes the previous checkpoint before the new one "
                       "is marked complete, so a kill at that moment leaves nothing to resume from; use 2.")
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path,
                                              model_max_length=training_args.model_max_length, padding_side="right")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    transformers.set_seed(training_args.seed)  # the new modules' initial weights follow --seed too
    model = build_model(model_args, data_args, training_args)
    if model_args.pretrain_mm_mlp_adapter:
        load_mm_projector_weights(model, model_args.pretrain_mm_mlp_adapter)
    _log_partitioning(model, training_args.world_size)
    parts = parse_tunable_parts(model_args.mm_tunable_parts)
    apply_tunable_parts(model, parts)
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()

    image_processor = load_image_processor(model_args.model_name_or_path, model.config)
    if image_processor is None:
        image_processor = CLIPImageProcessorPil.from_pretrained(model.config.mm_vision_tower)
    dataset = LazySupervisedDataset(
        load_records(data_args.data_path, training_args.max_bad_sample_fraction), tokenizer, image_processor, model.config, model_args.version,
        data_args.image_folder, training_args.model_max_length, model.get_vision_tower().num_output_tokens,
    )
    trainer = LLaVATrainer(
        model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
        data_collator=DataCollatorForSupervisedDataset(tokenizer.pad_token_id),
        multimodal_only_prefixes=multimodal_prefixes(parts) if trains_multimodal_only(parts) else None,
    )
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    trainer.save_state()
    model.config.use_cache = True
    trainer.save_model(training_args.output_dir)
    if training_args.should_save:
        tokenizer.save_pretrained(training_args.output_dir)
        image_processor.save_pretrained(training_args.output_dir)
        logger.info("Saved the trained model to %s", training_args.output_dir)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # a clean exit instead of waiting on teardown


if __name__ == "__main__":
    try:
        train(sys.argv[1:])
    except TrainingSetupError as error:
        sys.exit(f"error: {error}")
