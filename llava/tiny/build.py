"""Build every tiny offline asset in one go: dataset, tokenizer, tiny Vicuna, tiny CLIP, and
ready-to-run tiny LLaVA checkpoints (baseline and ProxyV), all with `save_pretrained`. With
`family` (e.g. "qwen2"), also the same tiny LLM in that decoder family (`tiny-qwen2`), with the
same tokenizer and the same text pretraining, for the launch scripts' `TINY_FAMILY`.

`python -m llava.tiny` runs it (default folder `playground/tiny`). Existing, complete assets are
kept, so calling it again is cheap.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from llava.model.assemble import build_llava_from_llm

from .dataset import generate_tiny_dataset, iter_dataset_texts
from .models import build_tiny_clip, build_tiny_llm, tiny_clip_image_processor
from .pretrain_llm import pretrain_tiny_llm
from .tokenizer import tiny_tokenizer_corpus, train_tiny_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_TINY_DIR = Path("playground") / "tiny"
TINY_PROXYV_START_LAYER = 2
DEFAULT_LLM_TEXT_STEPS = 600


@dataclass(frozen=True)
class TinyAssets:
    """Where the tiny assets live under one root folder."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def captions(self) -> Path:
        return self.data / "tiny_captions.json"

    @property
    def instruct(self) -> Path:
        return self.data / "tiny_instruct.json"

    @property
    def llm(self) -> Path:
        return self.root / "tiny-vicuna"

    def family_llm(self, family: str) -> Path:
        """The tiny LLM of a decoder family: `tiny-vicuna` for Llama, `tiny-<family>` otherwise."""
        return self.llm if family == "llama" else self.root / f"tiny-{family}"

    @property
    def clip(self) -> Path:
        return self.root / "tiny-clip-vit-336"

    @property
    def llava(self) -> Path:
        return self.root / "tiny-llava"

    @property
    def llava_proxyv(self) -> Path:
        return self.root / "tiny-llava-proxyv"

    def example_image(self) -> Path:
        return sorted((self.data / "images").glob("*.png"))[0]


def _done(folder: Path, marker: str = "config.json") -> bool:
    return (folder / marker).is_file()


def _save_llava(assets: TinyAssets, out_dir: Path, proxyv_start_layer: int | None, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the fresh projector / ProxyV modules are the same on every build
        model = build_llava_from_llm(str(assets.llm), str(assets.clip), proxyv_start_layer=proxyv_start_layer,
                                     tokenizer_model_max_length=4096)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(assets.llm).save_pretrained(out_dir)
    tiny_clip_image_processor().save_pretrained(out_dir)


def build_tiny_assets(root: str | Path = DEFAULT_TINY_DIR, seed: int = 0,
                      llm_text_steps: int = DEFAULT_LLM_TEXT_STEPS, family: str = "llama") -> TinyAssets:
    """Build whatever is missing under `root` and return where everything is.

    `llm_text_steps` > 0 pretrains a newly built tiny LLM on text for that many steps (see
    `llava.tiny.pretrain_llm`, about 1 min for the default), so that the launch scripts' short
    training ends in a model that answers in kind; 0 keeps it random (the tests do: it builds in
    seconds and they need no language skill).
    """
    assets = TinyAssets(Path(root))
    if not (assets.captions.is_file() and assets.instruct.is_file()):
        generate_tiny_dataset(assets.data, seed=seed)
    if not _done(assets.llm):
        logger.info("Training the tiny tokenizer and building the tiny Vicuna-like LLM in %s", assets.llm)
        corpus = tiny_tokenizer_corpus(iter_dataset_texts([assets.captions, assets.instruct]))
        build_tiny_llm(assets.llm, train_tiny_tokenizer(corpus), seed=seed)
        if llm_text_steps > 0:
            pretrain_tiny_llm(assets.llm, llm_text_steps, seed=seed)
    if family != "llama" and not _done(assets.family_llm(family)):
        logger.info("Building the tiny %s LLM (same shape and tokenizer) in %s", family, assets.family_llm(family))
        build_tiny_llm(assets.family_llm(family), AutoTokenizer.from_pretrained(assets.llm), seed=seed, family=family)
        if llm_text_steps > 0:
            pretrain_tiny_llm(assets.family_llm(family), llm_text_steps, seed=seed)
    if not _done(assets.clip):
        build_tiny_clip(assets.clip, seed=seed)
    if not _done(assets.llava):
        _save_llava(assets, assets.llava, None, seed)
    if not _done(assets.llava_proxyv):
        _save_llava(assets, assets.llava_proxyv, TINY_PROXYV_START_LAYER, seed)
    logger.info("Tiny assets are ready in %s", assets.root)
    return assets
