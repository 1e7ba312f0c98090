"""Shared pytest fixtures (built offline, in-process)."""

from __future__ import annotations

import pytest
import torch

from llava.tiny.build import build_tiny_assets
from llava.tiny.tokenizer import tiny_tokenizer_corpus, train_tiny_tokenizer


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The tiny models run fastest on one thread; two threads on two busy cores thrash."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """The package's tiny offline assets (dataset, tokenizer, tiny Vicuna, tiny CLIP, LLaVA and
    ProxyV checkpoints), built once per session; tests must not write into them."""
    return build_tiny_assets(tmp_path_factory.mktemp("tiny"), llm_text_steps=0, clip_pretrain_steps=0, num_scenes=200)

# ----------------------------------------------------------------------------- tiny tokenizer
# Used by the conversation, mm_utils, tokenizer and preprocessing tests.

TOKENIZER_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "What color is the square? The square is red.",
    "Where is the circle? The blue circle is at the bottom right of the image.",
    "How many shapes are there in the picture? There are 3 shapes: a square, a circle and a triangle.",
    "Describe the image briefly. A green triangle next to a small yellow star.",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The package's tiny Llama-like tokenizer, trained once per test session."""
    return train_tiny_tokenizer(tiny_tokenizer_corpus(TOKENIZER_TEXTS * 4), vocab_size=1000)


# ----------------------------------------------------------------------------- end of tiny tokenizer
