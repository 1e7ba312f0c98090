"""`python -m llava.eval.run_llava`: answer one question about one or more images, as LLaVA's tool.

With no `--model-path` it builds the tiny offline assets (if missing) and asks the tiny ProxyV
model about a bundled image, which is the embedded default of the README's first command.
"""

import argparse
import logging
import sys

import torch

from llava.conversation import get_conv_template
from llava.mm_utils import tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.serve.inference import (
    default_conv_mode,
    generation_kwargs,
    load_images,
    one_line,
    pixels_for_model,
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
           top_p: float | None = None, num_beams: int = 1, max_new_tokens: int = 64) -> str:
    """One generated answer for `query` about the PIL `images`."""
    prompt = build_prompt(query, len(images), conv_mode)
    input_ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None].to(model.device)
    output_ids = model.generate(
        input_ids,
        images=pixels_for_model(images, image_processor, model) if images else None,
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
    parser.add_argument("--conv-mode", default=None)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--attn-implementation", default="sdpa")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model_path, image_files = args.model_path, args.image_file
    if model_path is None:
        from llava.tiny.build import build_tiny_assets

        assets = build_tiny_assets()
        model_path = str(assets.llava_proxyv)
        image_files = image_files or str(assets.example_image())
        logger.info("No --model-path: using the tiny ProxyV model %s", model_path)
    if not image_files:
        print("error: --image-file is required with --model-path", file=sys.stderr)
        return 2
    try:
        images = load_images(image_files)
        tokenizer, model, image_processor, _ = load_pretrained_model(
            model_path, args.model_base, None, device=args.device, attn_implementation=args.attn_implementation
        )
    except (FileNotFoundError, ValueError, OSError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    conv_mode = args.conv_mode or default_conv_mode(model.config, tokenizer)
    print(f"Q ({', '.join(image_files.split(','))}): {args.query}")
    try:
        reply = answer(tokenizer, model, image_processor, images, args.query, conv_mode, args.temperature,
                       args.top_p, args.num_beams, args.max_new_tokens)
    except ValueError as error:  # e.g. an unknown --conv-mode
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    print(f"A: {reply}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
