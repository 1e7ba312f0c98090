"""Every decoder family's chat template, checked token by token with a tokenizer shaped like the
family's (its special tokens, its BOS or none, byte-level or sentencepiece-like), and the choice of
template from a model's config.json and tokenizer files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import (
    TokenizerFacts,
    conv_templates,
    default_template_for_model,
    get_conv_template,
    read_tokenizer_facts,
    template_for_model,
)
from llava.mm_utils import tokenizer_image_token
from llava.tiny.tokenizer import tiny_tokenizer_corpus, train_tiny_tokenizer
from llava.train.preprocess import build_conversation, tokenize_conversation

REPO = Path(__file__).resolve().parents[1]

DIALOGUE = [
    {"from": "human", "value": "<image>\nWhat color is the square?"},
    {"from": "gpt", "value": "The square is red."},
    {"from": "human", "value": "Where is the circle?"},
    {"from": "gpt", "value": "The blue circle is at the bottom right."},
]
CAPTION = [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": "A red square."}]
CORPUS_TEXTS = [turn["value"].replace("<image>\n", "") for turn in DIALOGUE + CAPTION] * 4

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_V1_SYSTEM = VICUNA_SYSTEM.replace("user", "human")
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
INTERNLM2_SYSTEM = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI Laboratory "
    "(上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the user "
    "such as English and 中文."
)

# ----------------------------------------------------------------------------- family tokenizers

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PHI3_SPECIALS = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
INTERNLM2_SPECIALS = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>",
                      "<|im_start|>"]
# Qwen2's pre-tokenizer split (GPT-2 style: words keep their leading space, newline runs are pieces).
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
MISTRAL_CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
                         "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}"
                         "{% endif %}{% endfor %}")
QWEN2_CHAT_TEMPLATE = ("{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
                       "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA3_CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m.role + "
                        "'<|end_header_id|>\\n\\n' + m.content | trim + '<|eot_id|>' }}{% endfor %}")
QWEN3_CHAT_TEMPLATE = ("{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
                       "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                       "{%- if enable_thinking is defined and enable_thinking is false %}"
                       "{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}")


def sentencepiece_like(extra_specials=(), rstrip=False, **special_tokens):
    """The package's tiny Llama-like tokenizer (BOS <s>, "▁" word marker) plus a family's specials."""
    tokenizer = train_tiny_tokenizer(tiny_tokenizer_corpus(CORPUS_TEXTS), vocab_size=1000)
    if extra_specials:
        added = [AddedToken(token, special=True, normalized=False, rstrip=rstrip) for token in extra_specials]
        tokenizer.add_special_tokens({"additional_special_tokens": added})
    for name, value in special_tokens.items():
        setattr(tokenizer, name, value)
    return tokenizer


def byte_level(specials, bos=None, eos=None, added=(), chat_template=None):
    """A small byte-level BPE like Qwen's and Llama 3's (no BOS unless `bos` is given)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(tiny_tokenizer_corpus(CORPUS_TEXTS), trainer)
    if bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos,
                                        clean_up_tokenization_spaces=False, chat_template=chat_template)
    tokenizer.add_special_tokens({"additional_special_tokens": list(specials)})
    tokenizer.add_tokens(list(added))  # Qwen3's <think> / </think> are added, not special
    return tokenizer


TOKENIZERS = {
    "vicuna": lambda: sentencepiece_like(),
    "llama3": lambda: byte_level(LLAMA3_SPECIALS, bos="<|begin_of_text|>", eos="<|eot_id|>",
                                 chat_template=LLAMA3_CHAT_TEMPLATE),
    "qwen2": lambda: byte_level(QWEN_SPECIALS, eos="<|im_end|>", chat_template=QWEN2_CHAT_TEMPLATE),
    "qwen3": lambda: byte_level(QWEN_SPECIALS, eos="<|im_end|>", added=("<think>", "</think>"),
                                chat_template=QWEN3_CHAT_TEMPLATE),
    "phi3": lambda: sentencepiece_like(PHI3_SPECIALS, eos_token="<|endoftext|>"),
    "mistral": lambda: sentencepiece_like(chat_template=MISTRAL_CHAT_TEMPLATE),
    "internlm2": lambda: sentencepiece_like(INTERNLM2_SPECIALS),
    "yi": lambda: sentencepiece_like(eos_token="<|im_end|>"),
}


@pytest.fixture(scope="module")
def family_tokenizers():
    return {name: make() for name, make in TOKENIZERS.items()}


# ----------------------------------------------------------------------------- expected renderings
# (template, tokenizer, the prompt written out, the supervised text of each reply, generation stop)

CASES = {
    "v1": ("vicuna",
           VICUNA_SYSTEM + " USER: <image>\nWhat color is the square? ASSISTANT: The square is red.</s>"
           "USER: Where is the circle? ASSISTANT: The blue circle is at the bottom right.</s>",
           [" The square is red.</s>", " The blue circle is at the bottom right.</s>"], "</s>"),
    "vicuna_v1": ("vicuna",
                  VICUNA_SYSTEM + " USER: <image>\nWhat color is the square? ASSISTANT: The square is red.</s>"
                  "USER: Where is the circle? ASSISTANT: The blue circle is at the bottom right.</s>",
                  [" The square is red.</s>", " The blue circle is at the bottom right.</s>"], "</s>"),
    "llava_v1": ("vicuna",
                 LLAVA_V1_SYSTEM + " USER: <image>\nWhat color is the square? ASSISTANT: The square is red.</s>"
                 "USER: Where is the circle? ASSISTANT: The blue circle is at the bottom right.</s>",
                 [" The square is red.</s>", " The blue circle is at the bottom right.</s>"], "</s>"),
    "llava_llama_3": ("llama3",
                      "<|start_header_id|>system<|end_header_id|>\n\n" + LLAMA3_SYSTEM + "<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat color is the square?<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\nThe square is red.<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\nWhere is the circle?<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\nThe blue circle is at the bottom right."
                      "<|eot_id|>",
                      ["The square is red.<|eot_id|>", "The blue circle is at the bottom right.<|eot_id|>"],
                      "<|eot_id|>"),
    "qwen_1_5": ("qwen2",
                 "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                 "<|im_start|>user\n<image>\nWhat color is the square?<|im_end|>\n"
                 "<|im_start|>assistant\nThe square is red.<|im_end|>\n"
                 "<|im_start|>user\nWhere is the circle?<|im_end|>\n"
                 "<|im_start|>assistant\nThe blue circle is at the bottom right.<|im_end|>\n",
                 ["The square is red.<|im_end|>", "The blue circle is at the bottom right.<|im_end|>"],
                 "<|im_end|>"),
    "qwen_2": ("qwen2",
               "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
               "<|im_start|>user\n<image>\nWhat color is the square?<|im_end|>\n"
               "<|im_start|>assistant\nThe square is red.<|im_end|>\n"
               "<|im_start|>user\nWhere is the circle?<|im_end|>\n"
               "<|im_start|>assistant\nThe blue circle is at the bottom right.<|im_end|>\n",
               ["The square is red.<|im_end|>", "The blue circle is at the bottom right.<|im_end|>"],
               "<|im_end|>"),
    "qwen3": ("qwen3",
              "<|im_start|>user\n<image>\nWhat color is the square?<|im_end|>\n"
              "<|im_start|>assistant\n<think>\n\n</think>\n\nThe square is red.<|im_end|>\n"
              "<|im_start|>user\nWhere is the circle?<|im_end|>\n"
              "<|im_start|>assistant\n<think>\n\n</think>\n\nThe blue circle is at the bottom right.<|im_end|>\n",
              ["The square is red.<|im_end|>", "The blue circle is at the bottom right.<|im_end|>"],
              "<|im_end|>"),
    "phi3_instruct": ("phi3",
                      "<|system|>\nYou are a helpful AI assistant.<|end|>\n"
                      "<|user|>\n<image>\nWhat color is the square?<|end|>\n"
                      "<|assistant|>\nThe square is red.<|end|>\n"
                      "<|user|>\nWhere is the circle?<|end|>\n"
                      "<|assistant|>\nThe blue circle is at the bottom right.<|end|>\n",
                      ["The square is red.<|end|>", "The blue circle is at the bottom right.<|end|>"], "<|end|>"),
    "mistral_instruct": ("mistral",
                         "[INST] <image>\nWhat color is the square? [/INST] The square is red.</s>"
                         "[INST] Where is the circle? [/INST] The blue circle is at the bottom right.</s>",
                         [" The square is red.</s>", " The blue circle is at the bottom right.</s>"], "</s>"),
    "internlm2": ("internlm2",
                  "<|im_start|>system\n" + INTERNLM2_SYSTEM + "<|im_end|>\n"
                  "<|im_start|>user\n<image>\nWhat color is the square?<|im_end|>\n"
                  "<|im_start|>assistant\nThe square is red.<|im_end|>\n"
                  "<|im_start|>user\nWhere is the circle?<|im_end|>\n"
                  "<|im_start|>assistant\nThe blue circle is at the bottom right.<|im_end|>\n",
                  ["The square is red.<|im_end|>", "The blue circle is at the bottom right.<|im_end|>"],
                  "<|im_end|>"),
    "chatml_direct": ("yi",
                      "<|im_start|>system\nAnswer the questions.<|im_end|>"
                      "<|im_start|>user\n<image>\nWhat color is the square?<|im_end|>"
                      "<|im_start|>assistant\nThe square is red.<|im_end|>"
                      "<|im_start|>user\nWhere is the circle?<|im_end|>"
                      "<|im_start|>assistant\nThe blue circle is at the bottom right.<|im_end|>",
                      ["The square is red.<|im_end|>", "The blue circle is at the bottom right.<|im_end|>"],
                      "<|im_end|>"),
}


def test_every_template_has_a_case():
    assert set(CASES) | {"plain"} == set(conv_templates)


def expected_ids_and_labels(prompt, targets, tokenizer):
    """Token ids of `prompt` and the labels it should get, derived without the preprocessing code:
    a target's tokens are those between tokenizing the prompt up to its start and up to its end."""
    ids = tokenizer_image_token(prompt, tokenizer)
    labels, cursor = [IGNORE_INDEX] * len(ids), 0
    for target in targets:
        start = prompt.index(target, cursor)
        cursor = start + len(target)
        before = tokenizer_image_token(prompt[:start], tokenizer)
        through = tokenizer_image_token(prompt[:cursor], tokenizer)
        assert ids[: len(before)] == before and ids[: len(through)] == through, "a token crosses a reply edge"
        labels[len(before) : len(through)] = ids[len(before) : len(through)]
    return ids, labels


def decode_prompt(ids, tokenizer):
    """The text of `ids`, `<image>` where the image goes and without the BOS the tokenizer added."""
    if tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]:
        ids = ids[1:]
    chunks, current = [], []
    for token in ids + [IMAGE_TOKEN_INDEX]:
        if token == IMAGE_TOKEN_INDEX:
            chunks.append(tokenizer.decode(current, skip_special_tokens=False, clean_up_tokenization_spaces=False))
            current = []
        else:
            current.append(token)
    return "<image>".join(chunks)


@pytest.mark.parametrize("name", sorted(CASES))
def test_template_prompt_and_labels_token_by_token(family_tokenizers, name):
    family, prompt, targets, _ = CASES[name]
    tokenizer = family_tokenizers[family]
    assert build_conversation(DIALOGUE, name, has_image=True).get_prompt() == prompt
    segments = build_conversation(DIALOGUE, name, has_image=True).get_prompt_segments()
    assert [segment.text for segment in segments if segment.is_target] == targets

    input_ids, labels = tokenize_conversation(DIALOGUE, tokenizer, name, has_image=True)
    expected_ids, expected_labels = expected_ids_and_labels(prompt, targets, tokenizer)
    assert input_ids.tolist() == expected_ids
    assert labels.tolist() == expected_labels  # every position: the reply's token or IGNORE_INDEX
    assert input_ids.tolist().count(IMAGE_TOKEN_INDEX) == 1
    assert decode_prompt(input_ids.tolist(), tokenizer) == prompt
    if tokenizer.bos_token_id is None:  # Qwen's tokenizers add no BOS: the prompt's first token comes first
        assert input_ids[0] == tokenizer(prompt, add_special_tokens=False).input_ids[0]
    else:
        assert input_ids[0] == tokenizer.bos_token_id and input_ids.tolist().count(tokenizer.bos_token_id) == 1

    runs, current = [], []
    for label in labels.tolist() + [IGNORE_INDEX]:
        if label == IGNORE_INDEX and current:
            runs.append(tokenizer.decode(current, skip_special_tokens=False, clean_up_tokenization_spaces=False))
            current = []
        elif label != IGNORE_INDEX:
            current.append(label)
    # Decoding drops the space that opens a reply in sentencepiece-like tokenizers (Vicuna, Mistral).
    assert runs == [target.removeprefix(" ") for target in targets]


@pytest.mark.parametrize("name", sorted(CASES))
def test_generation_prompt_and_stop(family_tokenizers, name):
    """Inference prompts end exactly where training targets start; the CLI stops at the end token."""
    from llava.serve.cli import stop_string

    family, prompt, targets, stop = CASES[name]
    conversation = get_conv_template(name)
    conversation.append_message(conversation.roles[0], DIALOGUE[0]["value"])
    conversation.append_message(conversation.roles[1], None)
    assert conversation.get_prompt() == prompt[: prompt.index(targets[0])]
    assert stop_string(conversation) == stop and targets[0].endswith(stop)
    tokenizer = family_tokenizers[family]
    stop_ids = tokenizer(stop, add_special_tokens=False).input_ids
    assert len(stop_ids) == 1 and tokenizer.convert_ids_to_tokens(stop_ids) == [stop]  # one special token


def test_plain_caption_labels(family_tokenizers):
    tokenizer = family_tokenizers["vicuna"]
    input_ids, labels = tokenize_conversation(CAPTION, tokenizer, "plain", has_image=True)
    expected_ids, expected_labels = expected_ids_and_labels("<image>A red square.\n", ["A red square.\n"], tokenizer)
    assert (input_ids.tolist(), labels.tolist()) == (expected_ids, expected_labels)


def test_phi3_tokens_that_swallow_the_newline():
    """Phi-3's tokenizer strips the whitespace after its chat tokens (rstrip): same supervision."""
    tokenizer = sentencepiece_like(PHI3_SPECIALS, rstrip=True, eos_token="<|endoftext|>")
    _, prompt, targets, _ = CASES["phi3_instruct"]
    input_ids, labels = tokenize_conversation(DIALOGUE, tokenizer, "phi3_instruct", has_image=True)
    expected_ids, expected_labels = expected_ids_and_labels(prompt, targets, tokenizer)
    assert (input_ids.tolist(), labels.tolist()) == (expected_ids, expected_labels)
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    assert [label for label in labels.tolist() if label == end] == [end, end]  # each reply's <|end|>


@pytest.mark.parametrize(("name", "start"), [
    ("qwen_1_5", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"),
    ("qwen3", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"),
    ("internlm2", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"),
    ("phi3_instruct", "<|system|>\nBe brief.<|end|>\n<|user|>\n"),
    ("mistral_instruct", "[INST] Be brief.\n\n<image>\nWhat color"),
    ("llava_llama_3", "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"),
])
def test_system_turn(family_tokenizers, name, start):
    record = [{"from": "system", "value": "Be brief."}, *DIALOGUE]
    assert build_conversation(record, name, has_image=True).get_prompt().startswith(start)
    family, _, targets, _ = CASES[name]
    _, labels = tokenize_conversation(record, family_tokenizers[family], name, has_image=True)
    assert (labels != IGNORE_INDEX).sum() > 0


def test_qwen3_refuses_replies_with_thinking(family_tokenizers):
    record = [DIALOGUE[0], {"from": "gpt", "value": "<think>\nRed?\n</think>\n\nThe square is red."}]
    with pytest.raises(ValueError, match="non-thinking format"):
        tokenize_conversation(record, family_tokenizers["qwen3"], "qwen3", has_image=True)


# ----------------------------------------------------------------------------- template from the model

FAMILY_MODELS = [  # (model_type, tokenizer, template)
    ("llama", "vicuna", "v1"),
    ("llama", "llama3", "llava_llama_3"),
    ("llama", "internlm2", "internlm2"),  # InternLM2 converted to Llama layout
    ("internlm2", "internlm2", "internlm2"),
    ("qwen2", "qwen2", "qwen_1_5"),
    ("qwen2_moe", "qwen2", "qwen_1_5"),
    ("qwen3", "qwen3", "qwen3"),
    ("qwen3_moe", "qwen3", "qwen3"),
    ("phi3", "phi3", "phi3_instruct"),
    ("mistral", "mistral", "mistral_instruct"),
    ("mixtral", "mistral", "mistral_instruct"),
    ("llava_llama", "vicuna", "v1"),
    ("llava_proxyv_llama", "llama3", "llava_llama_3"),
    ("llava_qwen", "qwen2", "qwen_1_5"),
    ("llava_proxyv_qwen3", "qwen3", "qwen3"),
    ("llava_phi", "phi3", "phi3_instruct"),
    ("llava_mistral", "mistral", "mistral_instruct"),
]


def save_model_description(folder, model_type, tokenizer, **config):
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, **config}))
    return folder


@pytest.mark.parametrize(("model_type", "family", "template"), FAMILY_MODELS)
def test_template_for_model_type_and_tokenizer(family_tokenizers, tmp_path, model_type, family, template):
    tokenizer = family_tokenizers[family]
    assert default_template_for_model(model_type, TokenizerFacts.from_tokenizer(tokenizer)) == template
    folder = save_model_description(tmp_path / "model", model_type, tokenizer)
    facts = read_tokenizer_facts(folder)
    assert facts.tokens >= set(tokenizer.all_special_tokens) and facts.chat_template == (tokenizer.chat_template or "")
    assert template_for_model(str(folder)) == template


def test_family_defaults_without_a_tokenizer():
    expected = {"llama": "v1", "qwen2": "qwen_1_5", "qwen3": "qwen3", "phi3": "phi3_instruct",
                "mistral": "mistral_instruct", "internlm2": "internlm2"}
    assert {model_type: default_template_for_model(model_type) for model_type in expected} == expected


@pytest.mark.parametrize(("model_type", "facts", "message"), [
    ("gpt2", TokenizerFacts(), "No default conversation template for model_type 'gpt2'"),
    ("phi", TokenizerFacts(), "model_type 'phi'"),  # Phi-2, not Phi-3
    ("llava_next", TokenizerFacts(), "model_type 'llava_next'"),
    ("llama", TokenizerFacts(chat_template="[INST] {{ m }} [/INST]"), "try mistral_instruct"),
    ("llama", TokenizerFacts(frozenset({"<|im_start|>", "<|im_end|>"}), "<s>", "<|im_end|>"), "try chatml_direct"),
    ("qwen3", TokenizerFacts(chat_template="{{ '<|im_start|>assistant\\n' }}"), "no enable_thinking switch"),
    ("qwen2", TokenizerFacts(chat_template="{{ '<｜User｜>' + m }}"), "not ChatML"),
    ("phi3", TokenizerFacts(frozenset({"<|user|>", "<|im_sep|>"}), "<|endoftext|>"), "not Phi-3's"),
    ("mistral", TokenizerFacts(chat_template="<|im_start|>user", eos_token="<|im_end|>"), "not \\[INST\\]"),
])
def test_unknown_or_unclear_models_name_the_fix(model_type, facts, message):
    with pytest.raises(ValueError, match=message) as error:
        default_template_for_model(model_type, facts)
    assert "PROMPT_VERSION" in str(error.value) and "--version" in str(error.value)


def test_llama3_markers_alone_do_not_make_llama3(family_tokenizers):
    """The tiny tokenizer has every template's specials, Llama 3's included, but a Llama-2 BOS."""
    facts = TokenizerFacts.from_tokenizer(family_tokenizers["vicuna"])
    assert "<|start_header_id|>" in facts.tokens and "<|im_start|>" in facts.tokens
    assert default_template_for_model("llama", facts) == "v1"


def test_internlm2_recognised_by_its_tokenizer_class(tmp_path, family_tokenizers):
    folder = save_model_description(tmp_path / "internlm2-llama", "llama", family_tokenizers["vicuna"])
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "InternLM2Tokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert template_for_model(str(folder)) == "internlm2"


def test_checkpoint_conv_template_wins_except_plain(tmp_path, family_tokenizers):
    tokenizer = family_tokenizers["vicuna"]
    assert template_for_model(str(save_model_description(tmp_path / "a", "llava_llama", tokenizer,
                                                         conv_template="llava_v1"))) == "llava_v1"
    assert template_for_model(str(save_model_description(tmp_path / "b", "llava_llama", tokenizer,
                                                         conv_template="plain"))) == "v1"
    with pytest.raises(ValueError, match="Unknown conversation template 'nope'"):
        template_for_model(str(save_model_description(tmp_path / "c", "llava_llama", tokenizer, conv_template="nope")))


def test_missing_files_are_clear_errors(tmp_path, family_tokenizers):
    with pytest.raises(ValueError, match="no config.json"):
        template_for_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="no tokenizer files"):
        template_for_model(str(tmp_path))
    with pytest.raises(ValueError, match="is not a model folder"):
        template_for_model(str(tmp_path / "missing" / "deeper"))


def test_hub_name_from_the_cache_only(tmp_path, family_tokenizers, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--qwen3-tiny"
    save_model_description(repo / "snapshots" / revision, "qwen3", family_tokenizers["qwen3"])
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    assert template_for_model("org/qwen3-tiny", cache_dir=tmp_path) == "qwen3"
    with pytest.raises(ValueError, match="not in the Hugging Face cache.*PROMPT_VERSION"):
        template_for_model("org/not-cached", cache_dir=tmp_path)


def test_command_line(tmp_path, family_tokenizers):
    folder = save_model_description(tmp_path / "phi", "phi3", family_tokenizers["phi3"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "llava.conversation", "--model", str(folder)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stdout) == (0, "phi3_instruct\n")
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    run = subprocess.run([sys.executable, "-m", "llava.conversation", "--model", str(folder)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stdout == "" and run.stderr.startswith(f"error: --model {folder}: No default")


def test_launch_scripts_pick_the_stage_2_template(tmp_path, family_tokenizers):
    """scripts/common.sh: PROMPT_VERSION wins; unset, the LLM's family decides."""
    folder = save_model_description(tmp_path / "qwen3", "qwen3", family_tokenizers["qwen3"])
    script = 'source scripts/common.sh && resolve_prompt_version && echo "version=${PROMPT_VERSION}"'
    env = {**os.environ, "LLM_VERSION": str(folder), "PROXYV_START_LAYER": "none", "HF_HUB_OFFLINE": "1"}
    env.pop("PROMPT_VERSION", None)
    run = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip().endswith("version=qwen3"), run.stderr
    run = subprocess.run(["bash", "-c", script], cwd=REPO, env={**env, "PROMPT_VERSION": "qwen_1_5"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip().endswith("version=qwen_1_5"), run.stderr
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    run = subprocess.run(["bash", "-c", "set -e; " + script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0 and "version=" not in run.stdout and "PROMPT_VERSION" in run.stderr


def test_tiny_default_stays_vicuna(tiny_assets):
    assert template_for_model(str(tiny_assets.llm)) == "v1"
