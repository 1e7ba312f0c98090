"""`python -m llava.tiny [--out DIR]`: build the tiny offline assets (see `llava.tiny.build`)."""

import argparse
import logging

from .build import DEFAULT_LLM_TEXT_STEPS, DEFAULT_TINY_DIR, build_tiny_assets
from .models import TINY_FAMILY_OVERRIDES


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Build the tiny offline dataset, tokenizer and models.")
    parser.add_argument("--out", default=str(DEFAULT_TINY_DIR), help="folder for the assets (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--llm-text-steps", type=int, default=DEFAULT_LLM_TEXT_STEPS,
                        help="pretrain a newly built tiny LLM on text chats for this many steps, as real runs start "
                             "from a pretrained LLM (about 1 min on 2 CPU cores; 0 keeps it random; default %(default)s)")
    parser.add_argument("--family", default="llama", choices=sorted(TINY_FAMILY_OVERRIDES),
                        help="also build the tiny LLM in this decoder family, tiny-<family> (default: %(default)s, "
                             "the tiny Vicuna every run uses)")
    args = parser.parse_args(argv)
    if args.llm_text_steps < 0:
        parser.error("--llm-text-steps must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    assets = build_tiny_assets(args.out, seed=args.seed, llm_text_steps=args.llm_text_steps, family=args.family)
    print(f"Tiny assets in {assets.root}: data {assets.data}, LLM {assets.family_llm(args.family)}, "
          f"LLaVA {assets.llava}, ProxyV {assets.llava_proxyv}")


if __name__ == "__main__":
    main()
