"""`python -m llava.eval.run_llava`: answer one question about one or more images, as LLaVA's tool.

With no `--model-path` it builds the tiny offline assets (if missing) and asks the tiny ProxyV
model about a bundled image, which is the embedded default of the README's first command.

The options are checked before anything loads, by the same code as the chat CLI's
(`llava.serve.inference`): temperature >= 0, 0 < top_p <= 1, beams >= 1, max new tokens >= 1, a known
device and template; the prompt with its images plus the reply must fit the model's context. A
problem is one `error: ...` line on stderr, exit status 2 for a bad option or path, 1 for a file that
cannot be used (`llava.errors.run_main`); `--debug` shows the traceback.
"""

import argparse
import logging
import sys

import torch

from llava.conversation import get_conv_template
from llava.errors import UsageError, run_main
from llava.mm_utils import tokenizer_image_token
from llava.serve.inference import (
    add_answering_options,
    check_answering_options,
    check_context_length,
    check_conv_mode,
    check_generation_options,
    check_text,
    default_conv_mode,
    generation_kwargs,
    load_images,
    load_model,
    pixels_for_model,
    prompt_length,
    with_image_placeholders,
)

logger = logging.getLogger(__name__)


def build_prompt(query: str, num_images: int, conv_mode: str) -> str:
    """The chat prompt; `<image>` placeholders are added in front when the query has none."""
    conversation = get_conv_template(conv_mode)
    conversation.append_message(conversation.roles[0], with_image_placeholders(query, num_images))
    conversation.append_message(conversation.roles[1], None)
    return conversation.get_prompt()


@torch.inference_mode()
def answer(tokenizer, model, image_processor, images, query: str, conv_mode: str, temperature: float = 0.0,
           top_p: float | None = None, num_beams: int = 1, max_new_tokens: int = 64,
           context_len: int | None = None) -> str:
    """One generated answer for `query` about the PIL `images`. The options are validated as the
    command line's are; with `context_len`, a prompt (images expanded) plus `max_new_tokens` that does
    not fit is a UsageError saying the limit."""
    check_generation_options(temperature, max_new_tokens, top_p, num_beams)
    check_conv_mode(conv_mode)
    prompt = build_prompt(query, len(images), conv_mode)
    input_ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")
    pixels = pixels_for_model(images, image_processor, model) if images else None
    if context_len is not None:
        sizes = [image.size for image in images] if images else None
        check_context_length(prompt_length(input_ids, pixels, model, sizes), max_new_tokens, context_len,
                             "Shorten --query, use fewer images, or lower --max-new-tokens.")
    output_ids = model.generate(
        input_ids[None].to(model.device),
        images=pixels,
        image_sizes=[image.size for image in images] if images else None,
        **generation_kwargs(tokenizer, temperature, max_new_tokens, top_p, num_beams),
    )
    return tokenizer.decode(output_ids[0], skip_special_tokens=True).strip()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Ask a LLaVA / ProxyV model one question about images.")
    parser.add_argument("--model-path", default=None, help="checkpoint folder or hub name (default: tiny ProxyV)")
    parser.add_argument("--model-base", default=None)
    parser.add_argument("--image-file", default=None, help="image path(s), comma-separated")
    parser.add_argument("--query", default="What is in the image?")
    add_answering_options(parser, max_new_tokens=64)
    return parser.parse_args(argv)


def check_args(args) -> None:
    """The option checks the chat CLI makes too, before anything loads; UsageError."""
    check_answering_options(args)
    if args.image_file is None and args.model_path is not None:
        raise UsageError("--image-file is required with --model-path; give one or more image paths, comma-separated.")
    if not args.query.strip():
        raise UsageError("--query is empty; ask a question.")
    check_text(args.query, "--query")


def main(argv=None) -> int:
    """One question, one answer; problems the user can fix raise `llava.errors.UserError` (run it
    through `run_main`)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_args(args)
    model_path, image_files = args.model_path, args.image_file
    if model_path is None:
        from llava.tiny.build import build_tiny_assets

        assets = build_tiny_assets()
        model_path = str(assets.llava_proxyv)
        image_files = image_files or str(assets.example_image())
        logger.info("No --model-path: using the tiny ProxyV model %s", model_path)
    images = load_images(image_files)
    tokenizer, model, image_processor, context_len = load_model(
        model_path, args.model_base, device=args.device, attn_implementation=args.attn_implementation
    )
    if image_processor is None:
        raise UsageError(f"--model-path {model_path} has no vision tower; it cannot answer about images.")
    conv_mode = args.conv_mode or default_conv_mode(model.config, tokenizer)
    print(f"Q ({', '.join(path.strip() for path in image_files.split(','))}): {args.query}")
    reply = answer(tokenizer, model, image_processor, images, args.query, conv_mode, args.temperature,
                   args.top_p, args.num_beams, args.max_new_tokens, context_len)
    print(f"A: {reply}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
