"""The inference steps the chat CLI (`llava.serve.cli`) and `llava.eval.run_llava` share: opening
the images, choosing the conversation template, pixels for the model, generation options, the
`<image>` placeholders of a first turn, and the one-line form of an error."""

from __future__ import annotations

import logging

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import TokenizerFacts, default_template_for_model
from llava.mm_utils import load_image, process_images

logger = logging.getLogger(__name__)


def load_images(image_files: str) -> list:
    """Open the comma-separated image paths (or URLs) as RGB images; errors name the file."""
    paths = [path.strip() for path in image_files.split(",")]
    if not all(paths):
        raise ValueError(f"--image-file has an empty entry: {image_files!r}; separate paths with single commas.")
    return [load_image(path) for path in paths]


def default_conv_mode(config, tokenizer=None) -> str:
    """The checkpoint's `conv_template` if its config names one (our training writes it), else the
    template of its LLM family (`llava.conversation.default_template_for_model`: Vicuna v1 for a
    Llama LLaVA, qwen_1_5 for `llava_qwen`, phi3_instruct for `llava_phi`, ...), refined by the
    tokenizer's own chat format when it is given. A family it cannot tell: ValueError naming --conv-mode."""
    template = getattr(config, "conv_template", None)
    if template and template != "plain":
        logger.info("Conversation template: %s (from the checkpoint's config)", template)
        return template
    model_type = getattr(config, "model_type", None)
    facts = TokenizerFacts.from_tokenizer(tokenizer) if tokenizer is not None else None
    template = default_template_for_model(str(model_type), facts)
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


def with_image_placeholders(text: str, num_images: int) -> str:
    """`text` with one `<image>` line per image in front, unless it already places them itself."""
    if num_images == 0 or DEFAULT_IMAGE_TOKEN in text:
        return text
    return (DEFAULT_IMAGE_TOKEN + "\n") * num_images + text


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
