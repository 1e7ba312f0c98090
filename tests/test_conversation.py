"""Conversation templates render exactly LLaVA's prompt formats."""

from __future__ import annotations

import pytest

from llava.conversation import (
    SeparatorStyle,
    conv_templates,
    default_conversation,
    get_conv_template,
)

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)


def _dialogue(name, *messages):
    conversation = get_conv_template(name)
    for index, message in enumerate(messages):
        conversation.append_message(conversation.roles[index % 2], message)
    return conversation


def test_vicuna_v1_prompt_and_generation_header():
    conversation = _dialogue("vicuna_v1", "<image>\nWhat is it?", "A square.", "Color?", None)
    expected = VICUNA_SYSTEM + " USER: <image>\nWhat is it? ASSISTANT: A square.</s>USER: Color? ASSISTANT:"
    assert conversation.get_prompt() == expected
    assert conversation.version == "v1" and conversation.sep_style is SeparatorStyle.TWO


def test_v1_aliases_and_llava_v1_system():
    assert conv_templates["v1"] is conv_templates["vicuna_v1"]
    assert default_conversation is conv_templates["vicuna_v1"]
    llava_v1 = _dialogue("llava_v1", "Hi", None)
    assert llava_v1.get_prompt() == LLAVA_V1_SYSTEM + " USER: Hi ASSISTANT:"


def test_plain_prompt_is_image_then_caption():
    assert _dialogue("plain", "<image>", "A red square.").get_prompt() == "<image>A red square.\n"
    assert _dialogue("plain", "<image>", None).get_prompt() == "<image>"


def test_llama3_prompt():
    conversation = _dialogue("llava_llama_3", "<image>\nWhat is it?", "A square.", "Color?", None)
    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    expected = (
        header.format("system") + LLAMA3_SYSTEM + "<|eot_id|>"
        + header.format("user") + "<image>\nWhat is it?<|eot_id|>"
        + header.format("assistant") + "A square.<|eot_id|>"
        + header.format("user") + "Color?<|eot_id|>"
        + header.format("assistant")
    )  # fmt: skip
    assert conversation.get_prompt() == expected


def test_qwen_chatml_prompt():
    conversation = _dialogue("qwen_1_5", "<image>\nWhat is it?", "A square.", "Color?", None)
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n"
        "<|im_start|>assistant\nA square.<|im_end|>\n"
        "<|im_start|>user\nColor?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert conversation.get_prompt() == expected
    assert conv_templates["qwen_2"] is conv_templates["qwen_1_5"]


def test_chatml_direct_prompt():
    conversation = _dialogue("chatml_direct", "Hi", "Hello.", "Bye", None)
    expected = (
        "<|im_start|>system\nAnswer the questions.<|im_end|>"
        "<|im_start|>user\nHi<|im_end|><|im_start|>assistant\nHello.<|im_end|>"
        "<|im_start|>user\nBye<|im_end|><|im_start|>assistant\n"
    )
    assert conversation.get_prompt() == expected


def test_tuple_message_uses_its_text():
    as_tuple = _dialogue("vicuna_v1", ("<image>\nWhat is it?", object(), "Default"), None)
    as_text = _dialogue("vicuna_v1", "<image>\nWhat is it?", None)
    assert as_tuple.get_prompt() == as_text.get_prompt()
    assert as_tuple.dict()["messages"][0][1] == "<image>\nWhat is it?"


def test_bad_message_type_is_a_clear_error():
    with pytest.raises(ValueError, match="string or a tuple"):
        _dialogue("vicuna_v1", 42, None).get_prompt()


@pytest.mark.parametrize(
    "name",
    ["vicuna_v1", "llava_llama_3", "qwen_1_5", "plain", "chatml_direct", "qwen3", "phi3_instruct",
     "mistral_instruct", "internlm2"],
)
def test_segments_join_to_prompt_and_mark_only_replies(name):
    conversation = (
        _dialogue(name, "<image>\nQ1", "R1", "Q2", "R2")
        if name != "plain"
        else _dialogue(name, "<image>", "R1")
    )
    segments = conversation.get_prompt_segments()
    assert "".join(segment.text for segment in segments) == conversation.get_prompt()
    targets = [segment.text for segment in segments if segment.is_target]
    end = {"vicuna_v1": "</s>", "llava_llama_3": "<|eot_id|>", "plain": "\n", "phi3_instruct": "<|end|>",
           "mistral_instruct": "</s>"}.get(name, "<|im_end|>")
    # Vicuna's generation prompt ends at "ASSISTANT:", Mistral's at "[/INST]": the model writes the space.
    start = " " if name in ("vicuna_v1", "mistral_instruct") else ""
    expected = [start + "R1" + end] if name == "plain" else [start + "R1" + end, start + "R2" + end]
    assert targets == expected
    # The text before each target is exactly the generation prompt for that turn.
    generation = get_conv_template(name)
    generation.messages = [list(message) for message in conversation.messages[:1]]
    generation.append_message(generation.roles[1], None)
    first_target = next(i for i, segment in enumerate(segments) if segment.is_target)
    assert "".join(segment.text for segment in segments[:first_target]) == generation.get_prompt()


def test_copy_is_independent_and_dict_has_llava_keys():
    original = _dialogue("vicuna_v1", "Hi", "Hello.")
    clone = original.copy()
    clone.append_message(clone.roles[0], "More")
    clone.messages[0][1] = "Changed"
    assert len(original.messages) == 2 and original.messages[0][1] == "Hi"
    assert set(original.dict()) == {"system", "roles", "messages", "offset", "sep", "sep2"}
    assert conv_templates["vicuna_v1"].messages == []


def test_qwen3_prompt_is_non_thinking():
    conversation = _dialogue("qwen3", "<image>\nWhat is it?", "A square.", "Color?", None)
    expected = (
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nA square.<|im_end|>\n"
        "<|im_start|>user\nColor?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert conversation.get_prompt() == expected
    targets = [segment.text for segment in conversation.get_prompt_segments() if segment.is_target]
    assert targets == ["A square.<|im_end|>"]  # the empty thinking block is prompt, not target


def test_phi3_and_mistral_prompts():
    phi3 = _dialogue("phi3_instruct", "Hi", "Hello.", "Bye", None)
    assert phi3.get_prompt() == (
        "<|system|>\nYou are a helpful AI assistant.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello.<|end|>\n"
        "<|user|>\nBye<|end|>\n<|assistant|>\n"
    )
    mistral = _dialogue("mistral_instruct", "Hi", "Hello.", "Bye", None)
    assert mistral.get_prompt() == "[INST] Hi [/INST] Hello.</s>[INST] Bye [/INST]"
    mistral.set_system_message("Be brief.")
    assert mistral.get_prompt() == "[INST] Be brief.\n\nHi [/INST] Hello.</s>[INST] Bye [/INST]"


def test_reply_prefix_needs_chatml():
    conversation = _dialogue("vicuna_v1", "Hi", None)
    conversation.reply_prefix = "<think>\n\n</think>\n\n"
    with pytest.raises(ValueError, match="reply_prefix is only supported by the CHATML style"):
        conversation.get_prompt()


def test_set_system_message_keeps_chatml_header():
    qwen = get_conv_template("qwen_1_5")
    qwen.set_system_message("Be brief.")
    assert qwen.system == "<|im_start|>system\nBe brief."
    qwen3 = get_conv_template("qwen3")  # no default system prompt, but the header comes with one
    qwen3.set_system_message("Be brief.")
    assert qwen3.system == "<|im_start|>system\nBe brief."
    phi3 = get_conv_template("phi3_instruct")
    phi3.set_system_message("<|system|>\nBe brief.")  # already headed: not doubled
    assert phi3.system == "<|system|>\nBe brief."
    vicuna = get_conv_template("vicuna_v1")
    vicuna.set_system_message("Be brief.")
    vicuna.append_message(vicuna.roles[0], "Hi")
    vicuna.append_message(vicuna.roles[1], None)
    assert vicuna.get_prompt() == "Be brief. USER: Hi ASSISTANT:"


def test_unknown_template_lists_known_names():
    with pytest.raises(ValueError, match="Unknown conversation template 'nope'") as error:
        get_conv_template("nope")
    for name in ("plain", "vicuna_v1", "llava_llama_3", "qwen_1_5", "qwen3", "phi3_instruct", "mistral_instruct",
                 "internlm2"):
        assert name in str(error.value)
