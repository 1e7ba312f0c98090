"""Training entry point: `python llava/train/train.py ...` or `torchrun ... llava/train/train.py ...`.

Stage 1 (`--version plain --mm_tunable_parts mm_mlp_adapter,mm_vision_mlp`) trains the projector
and ProxyV's modules and writes `mm_projector.bin`; stage 2 loads it with
`--pretrain_mm_mlp_adapter` and trains the LLM too, ending in a consolidated checkpoint that
`load_pretrained_model` and the CLI open directly. DeepSpeed comes in through `--deepspeed`.

Errors: every flag and path is checked before the model is built (the option values when the
arguments are parsed, see `llava.train.arguments`; then the paths, the stage-1 adapter, the data's
records). A problem is one `error: ...` line on stderr with exit status 2 (a bad option or path) or 1
(a damaged file, data with no usable records); `LLAVA_DEBUG=1` shows the traceback (`--debug` is
transformers' own flag here). See `llava.errors`.
"""

import glob
import logging
import os
import sys

import torch
import transformers
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava.errors import (
    DamagedInputError,
    UsageError,
    UserError,
    one_line,
    read_json_file,
    read_safetensors_header,
    require_path,
    run_main,
    short_reason,
    torch_load_file,
)
from llava.model import family_for_model_type
from llava.model.assemble import build_llava_from_llm
from llava.model.builder import load_image_processor
from llava.model.image_merge import FLAT_NEWLINE
from llava.model.model_registry import causal_lm_class_for_config, config_for_class, read_llava_config
from llava.model.multimodal_encoder.clip_encoder import CLIP_TOWER_TYPES
from llava.model.projector_weights import load_mm_projector_weights
from llava.model.proxyv.study import start_layer_for_mask_ratio
from llava.model.zero3_params import is_partitioned
from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments
from llava.train.check_data import check_training_paths
from llava.train.check_data import load_tokenizer as load_model_tokenizer
from llava.train.checkpoints import last_complete_checkpoint
from llava.train.data import DataCollatorForSupervisedDataset, LazySupervisedDataset, load_records
from llava.train.lora import enable_lora, quantization_config
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
    if pinpoints:  # parsed and checked with the arguments (a list of pairs, or the "(1x1),...,(3x3)" range)
        options["image_grid_pinpoints"] = pinpoints
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
        raise UsageError(f"--proxyv_variant {wanted} applies when training from a language model (+ stage-1 "
                         f"projector); the checkpoint {model_args.model_name_or_path} has proxyv_variant '{has}'. "
                         "Start from the LLM with --pretrain_mm_mlp_adapter, or drop --proxyv_variant.")


def build_model(model_args, data_args, training_args):
    """A fresh LLaVA from an LLM + tower, or an existing LLaVA checkpoint to continue training."""
    dtype = _dtype(training_args)
    quantization = quantization_config(training_args, dtype)  # QLoRA (--bits 4/8), else None
    load_options = {"quantization_config": quantization} if quantization is not None else {}
    try:
        source_config = read_llava_config(model_args.model_name_or_path)
    except (OSError, ValueError) as error:
        raise UsageError(f"--model_name_or_path {model_args.model_name_or_path}: its config cannot be loaded "
                         f"({short_reason(error, 160)}); give a model folder or a hub name.") from error
    if family_for_model_type(source_config.model_type) is not None:  # a LLaVA checkpoint of any family
        _check_checkpoint_variant(source_config, model_args)
        if source_config.mm_patch_merge_type != FLAT_NEWLINE:
            raise UsageError(f"--model_name_or_path {model_args.model_name_or_path} uses LLaVA-NeXT's "
                             f"'{source_config.mm_patch_merge_type}' layout, which the models run but training does "
                             f"not (its data pipeline counts '{FLAT_NEWLINE}' tokens); start from its language model "
                             "and vision tower instead.")
        source_config = _with_token_reduction(source_config, model_args)
        model_class = causal_lm_class_for_config(source_config)
        config = config_for_class(source_config, model_class)
        model = model_class.from_pretrained(model_args.model_name_or_path, config=config, dtype=dtype,
                                            attn_implementation=model_args.attn_implementation, **load_options)
    else:
        if not model_args.vision_tower:
            raise UsageError("--vision_tower is required when --model_name_or_path is a plain language model.")
        start = model_args.proxyv_start_layer
        if model_args.proxyv_enabled() and start is None and model_args.vision_mask_ratio is not None:
            start = start_layer_for_mask_ratio(model_args.vision_mask_ratio, source_config.num_hidden_layers)
        elif model_args.proxyv_enabled() and start is None:
            start = source_config.num_hidden_layers // 2
            logger.info("--proxyv True without --proxyv_start_layer: starting at the middle layer %d", start)
        model = build_llava_from_llm(model_args.model_name_or_path, model_args.vision_tower, start, dtype=dtype,
                                     attn_implementation=model_args.attn_implementation, load_options=load_options,
                                     **_multimodal_options(model_args, data_args, training_args))
    _check_crop_geometry(model, model_args)
    model.config.conv_template = model_args.version
    model.config.use_cache = False
    return model


def _check_crop_geometry(model, model_args) -> None:
    tower = model.get_vision_tower()
    if model_args.per_crop_token_len is not None and model_args.per_crop_token_len != tower.num_patches:
        raise UsageError(
            f"--per_crop_token_len {model_args.per_crop_token_len} does not match the vision tower's "
            f"{tower.num_patches} patches per crop."
        )
    if getattr(model.config, "proxyv", None):
        model.config.per_crop_token_len = tower.num_patches


def resume_checkpoint(training_args) -> str | None:
    """`--resume_from_checkpoint`, or the newest complete checkpoint already in the output folder."""
    if training_args.resume_from_checkpoint:
        if not os.path.isdir(training_args.resume_from_checkpoint):
            raise UsageError(f"--resume_from_checkpoint {training_args.resume_from_checkpoint} is not a "
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


def parse_arguments(argv=None):
    """(model, data, training) arguments; a bad value is a UsageError naming the flag. Our own checks
    raise it themselves (`llava.train.arguments`); transformers' checks of its TrainingArguments and
    HfArgumentParser's "arguments not used" raise ValueError, translated here."""
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    try:
        return parser.parse_args_into_dataclasses(argv)
    except UserError:
        raise
    except ValueError as error:
        message = one_line(error)
        if message.startswith("Some specified arguments are not used"):
            message = f"unknown arguments {message.split(': ', 1)[-1]}; see python llava/train/train.py --help."
        raise UsageError(message) from error


def _check_model_files(path: str | None, option: str) -> None:
    """A local model folder's config.json parses and its safetensors files are whole (headers only);
    else a DamagedInputError naming the file, before transformers fails on it without a name."""
    if not path or not os.path.isdir(path):
        return
    config = read_json_file(os.path.join(path, "config.json"), f"{option} config")
    if not isinstance(config, dict):
        raise DamagedInputError(f"{option} config {os.path.join(path, 'config.json')} is not a JSON object; "
                                "restore it from the original.")
    for weights in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        read_safetensors_header(weights)


def _check_vision_tower(path: str | None) -> None:
    """A local `--vision_tower` folder holds a CLIP vision model with its image processor settings."""
    if not path or not os.path.isdir(path):
        return
    model_type = read_json_file(os.path.join(path, "config.json"), "--vision_tower config").get("model_type")
    if model_type not in CLIP_TOWER_TYPES:
        raise UsageError(f"--vision_tower {path} holds a {model_type!r} model, not a CLIP vision tower; point it at "
                         "a CLIP model folder (e.g. openai/clip-vit-large-patch14-336).")
    if not os.path.isfile(os.path.join(path, "preprocessor_config.json")):
        raise DamagedInputError(f"--vision_tower {path} has no preprocessor_config.json (the image processor's "
                                "settings); copy it from the original CLIP model.")


def _check_adapter(path: str) -> None:
    """`--pretrain_mm_mlp_adapter`: a file (UsageError) that torch reads as named tensors (DamagedInputError)."""
    require_path(path, "--pretrain_mm_mlp_adapter", "file")
    weights = torch_load_file(path, "--pretrain_mm_mlp_adapter")
    if not isinstance(weights, dict) or not all(isinstance(value, torch.Tensor) for value in weights.values()):
        raise DamagedInputError(f"--pretrain_mm_mlp_adapter {path} does not hold named tensors; point at the "
                                "mm_projector.bin that stage 1 wrote.")


def check_training_setup(model_args, data_args, training_args) -> str | None:
    """Every path flag and the data, before anything heavy loads; returns the checkpoint to resume from.
    Raises UsageError (a path that is not there or of the wrong kind, an unknown --mm_tunable_parts) or
    DamagedInputError (a damaged model config / weights file or adapter, data with no records)."""
    check_training_paths(model_args.model_name_or_path, model_args.vision_tower, data_args.data_path,
                         data_args.image_folder)
    _check_model_files(model_args.model_name_or_path, "--model_name_or_path")
    _check_model_files(model_args.vision_tower, "--vision_tower")
    _check_vision_tower(model_args.vision_tower)
    if model_args.pretrain_mm_mlp_adapter:
        _check_adapter(model_args.pretrain_mm_mlp_adapter)
    try:
        parse_tunable_parts(model_args.mm_tunable_parts)
    except ValueError as error:
        raise UsageError(one_line(error)) from error
    model_args.token_reduction_options()  # orphan VisionZip / PyramidDrop flags: UsageError
    model_args.proxyv_enabled()  # --proxyv False contradicting another ProxyV flag: UsageError
    return resume_checkpoint(training_args)


def load_tokenizer(model_args, training_args):
    tokenizer = load_model_tokenizer(model_args.model_name_or_path, model_max_length=training_args.model_max_length,
                                     padding_side="right")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def train(argv=None) -> None:
    """One training run. Problems the user can fix raise `llava.errors.UserError` before the model is
    built (run it through `run_main`, as `python llava/train/train.py` does)."""
    model_args, data_args, training_args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    resume_from = check_training_setup(model_args, data_args, training_args)
    records = load_records(data_args.data_path, training_args.max_bad_sample_fraction)  # none: nothing to train on
    if training_args.save_total_limit == 1 and training_args.save_strategy != "no":
        logger.warning("--save_total_limit 1: transformers deletes the previous checkpoint before the new one "
                       "is marked complete, so a kill at that moment leaves nothing to resume from; use 2.")
    tokenizer = load_tokenizer(model_args, training_args)
    transformers.set_seed(training_args.seed)  # the new modules' initial weights follow --seed too
    try:
        model = build_model(model_args, data_args, training_args)
    except UserError:
        raise
    except ValueError as error:  # the model config's own checks of the flags' values
        raise UsageError(f"the model cannot be built with these options: {one_line(error)}") from error
    if model_args.pretrain_mm_mlp_adapter:
        load_mm_projector_weights(model, model_args.pretrain_mm_mlp_adapter)
    _log_partitioning(model, training_args.world_size)
    parts = parse_tunable_parts(model_args.mm_tunable_parts)
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()
    if training_args.lora_enable:
        model = enable_lora(model, training_args, parts)  # the PEFT model; its base is the LLaVA model
    else:
        apply_tunable_parts(model, parts)

    image_processor = load_image_processor(model_args.model_name_or_path, model.config)
    if image_processor is None:
        image_processor = CLIPImageProcessorPil.from_pretrained(model.config.mm_vision_tower)
    dataset = LazySupervisedDataset(
        records, tokenizer, image_processor, model.config, model_args.version,
        data_args.image_folder, training_args.model_max_length, model.get_vision_tower().num_output_tokens,
    )
    trainer = LLaVATrainer(
        model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
        data_collator=DataCollatorForSupervisedDataset(tokenizer.pad_token_id),
        multimodal_only_prefixes=multimodal_prefixes(parts) if trains_multimodal_only(parts) else None,
    )
    trainer.train(resume_from_checkpoint=resume_from)  # the run guards raise TrainingStopped
    trainer.save_state()
    model.config.use_cache = True
    trainer.save_model(training_args.output_dir)
    if training_args.should_save:
        tokenizer.save_pretrained(training_args.output_dir)
        image_processor.save_pretrained(training_args.output_dir)
        logger.info("Saved the trained model to %s", training_args.output_dir)
    if torch.distributed.is_initialized():
        # Every rank waits here until rank 0 has written the model, then all tear down together: a rank
        # that destroyed its process group while another was still saving aborted at exit now and then
        # ("terminate called without an active exception", ZeRO-3 LoRA test, loaded CPUs).
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(run_main(train, sys.argv[1:], debug_option=None))
