"""Training targets: only assistant replies (and their end-of-turn token) are supervised."""

from __future__ import annotations

import re

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, models, processors
from transformers import PreTrainedTokenizerFast

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.mm_utils import tokenizer_image_token
from llava.train.preprocess import build_conversation, tokenize_conversation

DIALOGUE = [
    {"from": "human", "value": "<image>\nWhat color is the square?"},
    {"from": "gpt", "value": "The square is red."},
    {"from": "human", "value": "Where is the circle?"},
    {"from": "gpt", "value": "The blue circle is at the bottom right, 2 cm away."},
    {"from": "human", "value": "How many shapes are there?"},
    {"from": "gpt", "value": "There are 3 shapes."},
]
REPLIES = [turn["value"] for turn in DIALOGUE[1::2]]
END_OF_TURN = {
    "vicuna_v1": "</s>",
    "llava_v1": "</s>",
    "llava_llama_3": "<|eot_id|>",
    "qwen_1_5": "<|im_end|>",
}


def supervised_runs(input_ids, labels):
    """Contiguous runs of supervised labels, checking each supervised label equals its input id."""
    runs, current = [], []
    for token, label in zip(input_ids.tolist(), labels.tolist()):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(label)
    return runs + ([current] if current else [])


def squash(text):
    return re.sub(r"\s+", "", text)


def template_prompt(name, turns):
    conversation = get_conv_template(name)
    for index, turn in enumerate(turns):
        conversation.append_message(conversation.roles[index % 2], turn["value"])
    return conversation.get_prompt()


@pytest.mark.parametrize("name", sorted(END_OF_TURN))
def test_chat_templates_supervise_replies_and_end_token(tiny_tokenizer, name):
    input_ids, labels = tokenize_conversation(DIALOGUE, tiny_tokenizer, name, has_image=True)
    assert input_ids.dtype == labels.dtype == torch.long and input_ids.shape == labels.shape
    runs = supervised_runs(input_ids, labels)
    assert [tiny_tokenizer.decode(run) for run in runs] == [reply + END_OF_TURN[name] for reply in REPLIES]
    assert labels[0] == IGNORE_INDEX and input_ids[0] == tiny_tokenizer.bos_token_id
    assert input_ids.tolist().count(IMAGE_TOKEN_INDEX) == 1
    assert labels[input_ids == IMAGE_TOKEN_INDEX].eq(IGNORE_INDEX).all()

    prompt = template_prompt(name, DIALOGUE)
    assert input_ids.tolist() == tokenizer_image_token(prompt, tiny_tokenizer)
    text_ids = input_ids[input_ids != IMAGE_TOKEN_INDEX].tolist()
    decoded = tiny_tokenizer.decode(text_ids, skip_special_tokens=False)
    assert squash(decoded) == squash("<s>" + prompt.replace("<image>", ""))


@pytest.mark.parametrize("name", sorted(END_OF_TURN))
def test_targets_start_where_the_generation_prompt_ends(tiny_tokenizer, name):
    """What the model learns to write first is what follows the prompt it gets at inference."""
    record = [DIALOGUE[0], {"from": "gpt", "value": "42, no: 7."}]
    input_ids, labels = tokenize_conversation(record, tiny_tokenizer, name, has_image=True)
    first_target = int((labels != IGNORE_INDEX).nonzero()[0])
    generation = get_conv_template(name)
    generation.append_message(generation.roles[0], DIALOGUE[0]["value"])
    generation.append_message(generation.roles[1], None)
    assert input_ids[:first_target].tolist() == tokenizer_image_token(generation.get_prompt(), tiny_tokenizer)
    supervised = int((labels != IGNORE_INDEX).sum())
    assert (labels[first_target : first_target + supervised] != IGNORE_INDEX).all()  # one contiguous run


def test_plain_supervises_the_caption_only(tiny_tokenizer):
    record = [
        {"from": "human", "value": "Describe the image.\n<image>"},
        {"from": "gpt", "value": "A red square."},
    ]
    input_ids, labels = tokenize_conversation(record, tiny_tokenizer, "plain", has_image=True)
    assert input_ids[:2].tolist() == [tiny_tokenizer.bos_token_id, IMAGE_TOKEN_INDEX]
    assert labels[:2].tolist() == [IGNORE_INDEX, IGNORE_INDEX] and (labels[2:] == input_ids[2:]).all()
    assert [tiny_tokenizer.decode(run) for run in supervised_runs(input_ids, labels)] == ["A red square.\n"]
    assert input_ids.tolist() == tokenizer_image_token("<image>A red square.\n", tiny_tokenizer)


def test_text_only_record(tiny_tokenizer):
    record = [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi!"}]
    input_ids, labels = tokenize_conversation(record, tiny_tokenizer, "vicuna_v1", has_image=False)
    assert IMAGE_TOKEN_INDEX not in input_ids.tolist()
    assert input_ids.tolist() == tiny_tokenizer(template_prompt("vicuna_v1", record)).input_ids
    assert [tiny_tokenizer.decode(run) for run in supervised_runs(input_ids, labels)] == ["Hi!</s>"]


@pytest.mark.parametrize("name", ["vicuna_v1", "qwen_1_5", "llava_llama_3"])
def test_system_turn_replaces_system_prompt(tiny_tokenizer, name):
    record = [{"from": "system", "value": "Answer in one word."}, *DIALOGUE[:2]]
    conversation = build_conversation(record, name, has_image=True)
    prompt = conversation.get_prompt()
    assert "Answer in one word." in prompt and "helpful" not in prompt
    if name == "qwen_1_5":
        assert prompt.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>\n")
    input_ids, labels = tokenize_conversation(record, tiny_tokenizer, name, has_image=True)
    assert len(supervised_runs(input_ids, labels)) == 1


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([DIALOGUE[1], DIALOGUE[0]], "Turn 0 is from 'gpt' where 'human' was expected"),
        ([DIALOGUE[0], DIALOGUE[2]], "Turn 1 is from 'human' where 'gpt' was expected"),
        (DIALOGUE[:3], "ends with a human turn"),
        ([DIALOGUE[0], {"from": "gpt", "value": "  "}], "Turn 1 .* is empty"),
        ([{"from": "user", "value": "<image>\nHi"}, DIALOGUE[1]], "Turn 0 is from 'user'"),
        ([DIALOGUE[0], {"from": "gpt", "value": "<image> here"}], "gpt reply containing '<image>'"),
        ([DIALOGUE[0], {"from": "gpt"}], "string 'value'"),
        ([], "no human/gpt turns"),
        ("<image>\nHi", "must be a list"),
    ],
)
def test_malformed_records_raise(tiny_tokenizer, record, message):
    with pytest.raises(ValueError, match=message):
        tokenize_conversation(record, tiny_tokenizer, "vicuna_v1", has_image=True)


def test_image_placeholder_must_match_has_image(tiny_tokenizer):
    with pytest.raises(ValueError, match="has an image but no '<image>'"):
        tokenize_conversation(DIALOGUE[2:4], tiny_tokenizer, "vicuna_v1", has_image=True)
    with pytest.raises(ValueError, match="has no image but its text contains 1"):
        tokenize_conversation(DIALOGUE, tiny_tokenizer, "vicuna_v1", has_image=False)
    with pytest.raises(ValueError, match="'plain' template takes one image"):
        tokenize_conversation(DIALOGUE, tiny_tokenizer, "plain", has_image=True)


def test_unknown_template(tiny_tokenizer):
    with pytest.raises(ValueError, match="Unknown conversation template 'vicuna'.*vicuna_v1"):
        tokenize_conversation(DIALOGUE, tiny_tokenizer, "vicuna", has_image=True)


def test_self_check_catches_tokens_crossing_a_reply_edge():
    """A tokenizer whose ': T' token straddles 'ASSISTANT: ' and the reply must be refused."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    vocab.update({":": 259, " ": 260, "T": 261, ": ": 262, ": T": 263})
    backend = Tokenizer(
        models.BPE(vocab=vocab, merges=[(":", " "), (": ", "T")], unk_token="<unk>", byte_fallback=True)
    )
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in ("<unk>", "<s>", "</s>")]
    )
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    with pytest.raises(ValueError, match="supervised tokens decode to"):
        tokenize_conversation(DIALOGUE[:2], tokenizer, "vicuna_v1", has_image=True)
