"""The inference steps the chat CLI (`llava.serve.cli`) and `llava.eval.run_llava` share: the one
validation of generation options, device and template names (before anything is loaded), opening
the images, choosing the conversation template, pixels for the model, generation options, the
`<image>` placeholders of a first turn and the check that a prompt and its reply fit the context.

Problems the user can fix raise `llava.errors.UsageError` (a bad option value, a path that does not
exist, a prompt too long for the model) or `DamagedInputError` (an image that cannot be decoded, text
that is not UTF-8), which the tools print as one `error: ...` line (`llava.errors.run_main`).
"""

from __future__ import annotations

import logging
import math
import os
import re

import torch

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import (
    Conversation,
    SeparatorStyle,
    TokenizerFacts,
    conv_templates,
    default_template_for_model,
)
from llava.errors import DamagedInputError, UsageError, UserError, one_line, short_reason
from llava.mm_utils import ImageTooLargeError, load_image, process_images
from llava.model.backends import ATTN_IMPLEMENTATIONS

__all__ = ["add_answering_options", "check_answering_options", "check_context_length", "check_conv_mode", "check_device", "check_generation_options", "check_text",
           "default_conv_mode", "generation_kwargs", "load_images", "load_model", "one_line", "pixels_for_model",
           "image_tokens", "prompt_length", "stop_string", "with_image_placeholders"]

logger = logging.getLogger(__name__)

DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"
DEFAULT_OPTION_NAMES = {"temperature": "--temperature", "top_p": "--top_p", "num_beams": "--num_beams",
                        "max_new_tokens": "--max-new-tokens"}


# ----------------------------------------------------------------------------- options, before loading


def check_generation_options(temperature: float = 0.0, max_new_tokens: int = 1, top_p: float | None = None,
                             num_beams: int = 1, names: dict[str, str] | None = None) -> None:
    """The one validation of generation options every tool applies before loading a model: temperature
    >= 0 (0 = greedy), 0 < top_p <= 1, num_beams >= 1, max_new_tokens >= 1, all finite. `names` maps
    each option to the flag the tool calls it (default: run_llava's). Raises UsageError naming the flag."""
    flag = {**DEFAULT_OPTION_NAMES, **(names or {})}
    if not math.isfinite(temperature) or temperature < 0:
        raise UsageError(f"{flag['temperature']} must be a number >= 0 (0 = greedy decoding), got {temperature}.")
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise UsageError(f"{flag['top_p']} must be in (0, 1] (1 = no nucleus cut), got {top_p}.")
    if num_beams < 1:
        raise UsageError(f"{flag['num_beams']} must be at least 1 (1 = no beam search), got {num_beams}.")
    if max_new_tokens < 1:
        raise UsageError(f"{flag['max_new_tokens']} must be at least 1, got {max_new_tokens}.")


def add_answering_options(parser, max_new_tokens: int) -> None:
    """The options `run_llava` and `model_vqa` share, under LLaVA's names (both spellings)."""
    parser.add_argument("--conv-mode", default=None, help="template (default: the checkpoint's)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top_p", "--top-p", dest="top_p", type=float, default=None, help="nucleus sampling, in (0, 1]")
    parser.add_argument("--num_beams", "--num-beams", dest="num_beams", type=int, default=1)
    parser.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int,
                        default=max_new_tokens)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument("--attn-implementation", default="sdpa", choices=ATTN_IMPLEMENTATIONS)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


def check_answering_options(args) -> None:
    """The checks of `add_answering_options`' values, before anything loads (UsageError); resolves --device."""
    check_generation_options(args.temperature, args.max_new_tokens, args.top_p, args.num_beams)
    args.device = check_device(args.device)
    check_conv_mode(args.conv_mode)


def check_device(device: str | None, option: str = "--device") -> str:
    """`device` if it is a device these tools run on (auto, cpu, cuda, cuda:N, mps) and is present here;
    else a UsageError naming `option`, the accepted forms and what this machine has."""
    name = "auto" if device is None else str(device).strip().lower()
    if name in ("auto", "cpu"):
        return name
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match:
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {device}: CUDA is not available on this machine; use {option} cpu "
                             "(or auto).")
        index = int(match.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0; use cuda:0 .. cuda:{torch.cuda.device_count() - 1}.")
        return name
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError(f"{option} mps: Apple's MPS backend is not available on this machine; use {option} "
                             "cpu (or auto).")
        return name
    raise UsageError(f"{option} {device!r} is not a device these tools run on; use {DEVICE_FORMS}.")


def check_conv_mode(conv_mode: str | None, option: str = "--conv-mode") -> None:
    """An unknown template name is a UsageError naming `option` and listing the known templates."""
    if conv_mode is not None and conv_mode not in conv_templates:
        raise UsageError(f"{option} {conv_mode!r} is not a conversation template. Known templates: "
                         f"{', '.join(sorted(conv_templates))}.")


def check_text(text: str, what: str) -> str:
    """`text` unless it holds bytes that were not UTF-8 (lone surrogates, as Python decodes such bytes
    from the command line or a pipe); then a DamagedInputError naming `what`."""
    if any("\ud800" <= char <= "\udfff" for char in text):
        raise DamagedInputError(f"{what} is not valid UTF-8 text; re-encode it as UTF-8.")
    return text


# ----------------------------------------------------------------------------- the model


def load_model(model_path: str, model_base: str | None = None, device: str = "auto",
               attn_implementation: str | None = None, load_8bit: bool = False, load_4bit: bool = False,
               option: str = "--model-path"):
    """`load_pretrained_model` for the tools: the builder checks a local checkpoint's files itself
    (UsageError / DamagedInputError); a hub name that cannot be fetched, or quantized loading without
    its package, becomes a UsageError naming the option."""
    from llava.model.builder import load_pretrained_model

    try:
        return load_pretrained_model(model_path, model_base, None, load_8bit=load_8bit, load_4bit=load_4bit,
                                     device=device, attn_implementation=attn_implementation)
    except UserError as error:  # the builder's own; make sure the line names the checkpoint
        if any(path and str(path) in str(error) for path in (model_path, model_base)):
            raise
        raise type(error)(f"{option} {model_path}: {error}") from error
    except ImportError as error:
        if not (load_8bit or load_4bit):
            raise
        raise UsageError(f"--load-8bit/--load-4bit need the bitsandbytes package ({short_reason(error, 160)}); "
                         "pip install bitsandbytes, or load in full precision.") from error
    except OSError as error:
        remote = [path for path in (model_path, model_base) if path is not None and not os.path.exists(path)]
        if not remote:
            raise
        raise UsageError(f"{option} {remote[0]} is not a local folder and could not be fetched as a hub model "
                         f"({short_reason(error, 160)}); give a checkpoint folder.") from error


# ----------------------------------------------------------------------------- images


def load_images(image_files: str, option: str = "--image-file") -> list:
    """Open the comma-separated image paths (or URLs) as RGB images. A path that does not exist is a
    UsageError, a file that is not a readable image a DamagedInputError; both name the file."""
    paths = [path.strip() for path in image_files.split(",")]
    if not all(paths):
        raise UsageError(f"{option} has an empty entry: {image_files!r}; separate paths with single commas.")
    images = []
    for path in paths:
        if os.path.isdir(os.path.expanduser(path)):
            raise UsageError(f"{option} {path} is a folder; give image files.")
        try:
            images.append(load_image(path))
        except FileNotFoundError as error:
            raise UsageError(f"{option} {path} does not exist; check the path.") from error
        except ImageTooLargeError as error:
            raise DamagedInputError(f"{option}: {one_line(error)}") from error
        except ValueError as error:  # not an image, truncated, a URL that cannot be fetched
            raise DamagedInputError(f"{option}: {one_line(error)}") from error
    return images


def default_conv_mode(config, tokenizer=None) -> str:
    """The checkpoint's `conv_template` if its config names one (our training writes it), else the
    template of its LLM family (`llava.conversation.default_template_for_model`: Vicuna v1 for a
    Llama LLaVA, qwen_1_5 for `llava_qwen`, phi3_instruct for `llava_phi`, ...), refined by the
    tokenizer's own chat format when it is given. A family it cannot tell: UsageError naming --conv-mode."""
    template = getattr(config, "conv_template", None)
    if template and template != "plain":
        if template not in conv_templates:
            raise UsageError(f"the checkpoint's config names conv_template {template!r}, which is not a known "
                             f"template; pass --conv-mode (known: {', '.join(sorted(conv_templates))}).")
        logger.info("Conversation template: %s (from the checkpoint's config)", template)
        return template
    model_type = getattr(config, "model_type", None)
    facts = TokenizerFacts.from_tokenizer(tokenizer) if tokenizer is not None else None
    try:
        template = default_template_for_model(str(model_type), facts)
    except ValueError as error:  # its message already says to pass --conv-mode
        raise UsageError(one_line(error)) from error
    if template == "v1":
        template = "vicuna_v1"  # the same template under the name LLaVA's tools use
    logger.info("Conversation template: %s (default for model_type %s; --conv-mode to change)", template, model_type)
    return template


def pixels_for_model(images: list, image_processor, model):
    """`process_images` for the model's config, on the model's device and dtype (tensor or list)."""
    pixels = process_images(images, image_processor, model.config)
    if isinstance(pixels, list):
        return [crops.to(model.device, model.dtype) for crops in pixels]
    return pixels.to(model.device, model.dtype)


def generation_kwargs(tokenizer, temperature: float, max_new_tokens: int, top_p: float | None = None,
                      num_beams: int = 1) -> dict:
    """Keyword arguments for `model.generate`: greedy at temperature 0, sampling above."""
    sampling = temperature > 0
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {
        "do_sample": sampling,
        "temperature": temperature if sampling else None,
        "top_p": top_p if sampling else None,
        "num_beams": num_beams,
        "max_new_tokens": max_new_tokens,
        "pad_token_id": pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "use_cache": True,
    }


def stop_string(conversation: Conversation) -> str | None:
    """The text that ends an assistant turn in this template (LLaVA's rule)."""
    return conversation.sep2 if conversation.sep_style == SeparatorStyle.TWO else conversation.sep


def with_image_placeholders(text: str, num_images: int) -> str:
    """`text` with one `<image>` line per image in front, unless it already places them itself."""
    if num_images == 0 or DEFAULT_IMAGE_TOKEN in text:
        return text
    return (DEFAULT_IMAGE_TOKEN + "\n") * num_images + text


# ----------------------------------------------------------------------------- the context


def image_tokens(pixels, model, image_sizes=None) -> tuple[int, int, int]:
    """(crops, vision tokens, newline tokens) the images of `pixels` (as `pixels_for_model` returns
    them) take in the model's sequence, under its layout (`llava.model.image_merge`); LLaVA-NeXT's
    `spatial_unpad` needs `image_sizes` (width, height) per image."""
    from llava.model.image_merge import image_token_counts
    from llava.model.llava_arch import split_image_crops

    crops = [image.shape[0] for image in split_image_crops(pixels)]
    tower = model.get_vision_tower()
    sizes = image_sizes if image_sizes is not None else [None] * len(crops)
    counts = [image_token_counts(model.config, count, tower.num_output_tokens, size, tower.config.image_size)
              for count, size in zip(crops, sizes)]
    return sum(crops), sum(vision for vision, _ in counts), sum(newline for _, newline in counts)


def prompt_length(input_ids: torch.Tensor, pixels, model, image_sizes=None) -> int:
    """Tokens the model's LLM reads for `input_ids` [T] with each image placeholder expanded to its
    tokens (`image_tokens`) for `pixels` (as `pixels_for_model` returns them)."""
    length = int((input_ids != IMAGE_TOKEN_INDEX).sum())
    if pixels is not None:
        _, vision, newline = image_tokens(pixels, model, image_sizes)
        length += vision + newline
    return length


def check_context_length(length: int, max_new_tokens: int, context_len: int, shorten: str,
                         what: str = "The prompt", option: str = "--max-new-tokens", with_images: bool = True) -> None:
    """A prompt of `length` tokens (images expanded) plus `max_new_tokens` must fit the model's
    `context_len`; else a UsageError saying the limit, the need and what to shorten (`shorten`)."""
    needed = length + max_new_tokens
    if needed > context_len:
        images = " with its images" if with_images else ""
        raise UsageError(
            f"{what} is {length} tokens long{images}; with {option} {max_new_tokens} that needs "
            f"{needed} tokens, more than the model's context of {context_len} tokens. {shorten}"
        )
