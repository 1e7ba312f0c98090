"""A tiny Llama/Vicuna-like tokenizer, trained locally in well under a second.

Like Llama's tokenizer it is a BPE over "▁"-marked words with byte fallback (all 256 `<0xNN>`
byte tokens are in the vocabulary, so any text encodes without `<unk>` and decodes back), a BOS
added to every encoding, and the specials `<unk>`=0, `<s>`=1, `</s>`=2, `<pad>`=3. Newlines are
tokens of their own, as in Llama. The special tokens of the other chat templates (ChatML,
Llama 3) are added so every template in `llava.conversation` tokenizes cleanly.

Decoding gives back the encoded text exactly, except that a leading space of the whole text is
absorbed by the word marker, as with Llama's tokenizer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from llava.conversation import conv_templates

WORD_MARKER = "▁"
BASE_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
CHAT_SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
BYTE_TOKENS = tuple(f"<0x{value:02X}>" for value in range(256))
MODEL_MAX_LENGTH = 4096

# No "<image>" here: prompts are split at it before tokenizing, so it needs no vocabulary.
_SAMPLE_DIALOGUE = (
    "What is shown in the image?",
    "A red square at the top left and a blue circle.",
    "How many shapes are there?",
    "There are 2 shapes.",
)


# Special tokens are matched whole before pre-tokenization, so training sees a split in their place.
_SPECIAL_TOKEN_PATTERN = re.compile(
    "|".join(re.escape(token) for token in (*BASE_SPECIAL_TOKENS, *CHAT_SPECIAL_TOKENS))
)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
            pre_tokenizers.Metaspace(replacement=WORD_MARKER, prepend_scheme="first"),
        ]
    )


def _train_merges(texts: Iterable[str], merge_budget: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Train a BPE on `texts`; return its learned tokens (in id order) and merges."""
    draft = Tokenizer(models.BPE(unk_token="<unk>"))
    draft.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=merge_budget,
        special_tokens=list(BASE_SPECIAL_TOKENS),
        limit_alphabet=max(1, merge_budget // 2),
        show_progress=False,
    )
    draft.train_from_iterator((_SPECIAL_TOKEN_PATTERN.sub("\n", text) for text in texts), trainer)
    model = json.loads(draft.to_str())["model"]
    learned = [token for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1])]
    return learned, [tuple(merge) for merge in model["merges"]]


def _build_tokenizer(learned: list[str], merges: list[tuple[str, str]]) -> Tokenizer:
    """Lay out the vocabulary Llama's way (specials, bytes, learned pieces) and wire it up."""
    vocab: dict[str, int] = {}
    for token in (*BASE_SPECIAL_TOKENS, *BYTE_TOKENS, *learned):
        vocab.setdefault(token, len(vocab))
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Metaspace(replacement=WORD_MARKER, prepend_scheme="first"),
            decoders.ByteFallback(),
            decoders.Fuse(),
        ]
    )
    specials = [*BASE_SPECIAL_TOKENS, *CHAT_SPECIAL_TOKENS]
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return tokenizer


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """Train the tiny tokenizer on `texts`; it has at most `vocab_size` tokens in all.

    The 4 base specials, the 256 byte tokens and the chat specials count towards `vocab_size`;
    the rest is learned merges (fewer when the texts are too small to fill it).
    """
    if isinstance(texts, str):
        raise ValueError("texts must be an iterable of strings, not a single string; wrap it in a list.")
    reserved = len(BYTE_TOKENS) + len(CHAT_SPECIAL_TOKENS)
    merge_budget = vocab_size - reserved
    if merge_budget <= len(BASE_SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small: it must exceed {reserved + 5}.")
    learned, merges = _train_merges(texts, merge_budget)
    return PreTrainedTokenizerFast(
        tokenizer_object=_build_tokenizer(learned, merges),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def tiny_tokenizer_corpus(extra_texts: Iterable[str] = ()) -> list[str]:
    """Texts covering every chat template's formatting (system prompts, roles, separators), plus
    `extra_texts`: train the tiny tokenizer on this so chat formatting gets compact tokens."""
    if isinstance(extra_texts, str):
        raise ValueError(
            "extra_texts must be an iterable of strings, not a single string; wrap it in a list."
        )
    extra = list(extra_texts)
    if not all(isinstance(text, str) for text in extra):
        raise ValueError("extra_texts must contain only strings.")
    corpus = []
    for template in conv_templates.values():
        conversation = template.copy()
        for index, message in enumerate(_SAMPLE_DIALOGUE):
            conversation.append_message(conversation.roles[index % 2], message)
        conversation.append_message(conversation.roles[0], _SAMPLE_DIALOGUE[0])
        conversation.append_message(conversation.roles[1], None)
        corpus += [conversation.get_prompt(), template.system, *template.roles]
    return corpus + extra
