"""The tiny Llama-like tokenizer: layout, byte fallback, exact round trips, offline save/reload."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from llava.tiny.tokenizer import CHAT_SPECIAL_TOKENS, tiny_tokenizer_corpus, train_tiny_tokenizer

TEXTS = [
    "hello world",
    "The square is red.\nThe circle is blue.",
    "Ünïcödé: café, naïve, 東京, Привет, עברית, emoji 🙂👍🏽, math ∑∫√",
    "tabs\tand\r\nnewlines\n\n  inner  spaces  ",
    "special tokens in text: a</s>b<|im_end|>c",
    "<0x41> looks like a byte token but is text",
]


def test_layout_is_llama_like(tiny_tokenizer):
    assert (tiny_tokenizer.unk_token_id, tiny_tokenizer.bos_token_id) == (0, 1)
    assert (tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id) == (2, 3)
    assert [tiny_tokenizer.convert_tokens_to_ids(f"<0x{value:02X}>") for value in (0, 10, 255)] == [
        4,
        14,
        259,
    ]
    assert tiny_tokenizer.model_max_length == 4096 and tiny_tokenizer.padding_side == "right"
    assert 400 < len(tiny_tokenizer) <= 1000
    for token in CHAT_SPECIAL_TOKENS:
        assert tiny_tokenizer(token, add_special_tokens=False).input_ids == [
            tiny_tokenizer.convert_tokens_to_ids(token)
        ]


def test_bos_is_added_once(tiny_tokenizer):
    ids = tiny_tokenizer("hello world").input_ids
    assert ids[0] == 1 and ids.count(1) == 1
    assert tiny_tokenizer("hello world", add_special_tokens=False).input_ids == ids[1:]
    assert tiny_tokenizer("").input_ids == [1]


def test_words_and_newlines_tokenize_like_llama(tiny_tokenizer):
    tokens = tiny_tokenizer.tokenize("The square\nis red")
    assert tokens[0].startswith("▁") and "\n" in tokens
    assert tiny_tokenizer.tokenize("ASSISTANT: The square is red.</s>")[-1] == "</s>"


@pytest.mark.parametrize("text", TEXTS)
def test_any_text_round_trips_exactly(tiny_tokenizer, text):
    ids = tiny_tokenizer(text).input_ids
    assert tiny_tokenizer.unk_token_id not in ids
    assert tiny_tokenizer.decode(ids, skip_special_tokens=False) == "<s> " + text
    if "</s>" not in text and "<|" not in text:
        assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == text


def test_leading_space_is_absorbed_like_llama(tiny_tokenizer):
    assert tiny_tokenizer(" hi").input_ids == tiny_tokenizer("hi").input_ids
    assert tiny_tokenizer.decode(tiny_tokenizer("\nhi").input_ids, skip_special_tokens=True) == "\nhi"


def test_save_and_reload_offline(tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(reloaded) == len(tiny_tokenizer) and reloaded.get_vocab() == tiny_tokenizer.get_vocab()
    for attribute in (
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "unk_token_id",
        "model_max_length",
        "padding_side",
    ):
        assert getattr(reloaded, attribute) == getattr(tiny_tokenizer, attribute)
    for text in TEXTS:
        ids = tiny_tokenizer(text).input_ids
        assert reloaded(text).input_ids == ids
        assert reloaded.decode(ids) == tiny_tokenizer.decode(ids)


def test_training_is_deterministic():
    corpus = tiny_tokenizer_corpus(["a small red square and a big blue circle"] * 3)
    first, second = train_tiny_tokenizer(corpus, vocab_size=400), train_tiny_tokenizer(corpus, vocab_size=400)
    assert first.get_vocab() == second.get_vocab() and len(first) <= 400
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


def test_bad_arguments():
    with pytest.raises(ValueError, match="too small"):
        train_tiny_tokenizer(["hello"], vocab_size=200)
    with pytest.raises(ValueError, match="single string"):
        train_tiny_tokenizer("hello world")
    with pytest.raises(ValueError, match="single string"):
        tiny_tokenizer_corpus("hello world")
