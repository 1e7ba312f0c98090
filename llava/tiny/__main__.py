"""`python -m llava.tiny [--out DIR]`: build the tiny offline assets (see `llava.tiny.build`).

A bad option (an `--out` that is a file, a negative seed or step count, fewer than 8 scenes) is one `error: ...` line on
stderr and exit status 2; a folder that cannot be written, status 1 (`llava.errors.run_main`);
`--debug` shows the traceback.
"""

import argparse
import logging
import sys

from llava.errors import UsageError, require_output_folder, run_main

from .build import (
    DEFAULT_CLIP_PRETRAIN_STEPS,
    DEFAULT_LLM_TEXT_STEPS,
    DEFAULT_NUM_SCENES,
    DEFAULT_TINY_DIR,
    build_tiny_assets,
)
from .models import TINY_FAMILY_OVERRIDES


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Build the tiny offline dataset, tokenizer and models.")
    parser.add_argument("--out", default=str(DEFAULT_TINY_DIR), help="folder for the assets (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--llm-text-steps", type=int, default=DEFAULT_LLM_TEXT_STEPS,
                        help="pretrain a newly built tiny LLM on text chats for this many steps, as real runs start "
                             "from a pretrained LLM (about 1 min on 2 CPU cores; 0 keeps it random; default %(default)s)")
    parser.add_argument("--clip-pretrain-steps", type=int, default=DEFAULT_CLIP_PRETRAIN_STEPS,
                        help="pretrain a newly built tiny CLIP on the training pictures for this many steps, as real "
                             "runs start from a trained CLIP (about 1 min; 0 keeps it random; default %(default)s)")
    parser.add_argument("--num-scenes", type=int, default=DEFAULT_NUM_SCENES,
                        help="training pictures to render (each gets a caption and a conversation asking all of "
                             "its questions; default %(default)s)")
    parser.add_argument("--family", default="llama", choices=sorted(TINY_FAMILY_OVERRIDES),
                        help="also build the tiny LLM in this decoder family, tiny-<family> (default: %(default)s, "
                             "the tiny Vicuna every run uses)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    if args.llm_text_steps < 0:
        raise UsageError(f"--llm-text-steps must be >= 0 (0 keeps the tiny LLM random), got {args.llm_text_steps}.")
    if args.clip_pretrain_steps < 0:
        raise UsageError(f"--clip-pretrain-steps must be >= 0 (0 keeps the tiny CLIP random), got "
                         f"{args.clip_pretrain_steps}.")
    if args.num_scenes < 8:
        raise UsageError(f"--num-scenes must be >= 8, got {args.num_scenes}.")
    if not 0 <= args.seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2**32), got {args.seed}.")
    out = require_output_folder(args.out, "--out", "a folder for the assets (new, or built before)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    assets = build_tiny_assets(out, seed=args.seed, llm_text_steps=args.llm_text_steps, family=args.family,
                               clip_pretrain_steps=args.clip_pretrain_steps, num_scenes=args.num_scenes)
    print(f"Tiny assets in {assets.root}: data {assets.data}, LLM {assets.family_llm(args.family)}, "
          f"LLaVA {assets.llava}, ProxyV {assets.llava_proxyv}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
