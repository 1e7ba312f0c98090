"""`python -m llava.tiny [--out DIR]`: build the tiny offline assets (see `llava.tiny.build`)."""

import argparse
import logging

from .build import DEFAULT_TINY_DIR, build_tiny_assets


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Build the tiny offline dataset, tokenizer and models.")
    parser.add_argument("--out", default=str(DEFAULT_TINY_DIR), help="folder for the assets (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    assets = build_tiny_assets(args.out, seed=args.seed)
    print(f"Tiny assets in {assets.root}: data {assets.data}, LLaVA {assets.llava}, ProxyV {assets.llava_proxyv}")


if __name__ == "__main__":
    main()
