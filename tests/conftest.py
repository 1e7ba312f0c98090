"""Shared pytest fixtures (built offline, in-process)."""

from __future__ import annotations

import pytest

from llava.tiny.tokenizer import tiny_tokenizer_corpus, train_tiny_tokenizer

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
