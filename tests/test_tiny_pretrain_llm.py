"""The tiny LLM's text pretraining: what it trains on (labels) and that it learns."""

import random
import shutil

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from llava.constants import IGNORE_INDEX
from llava.tiny.pretrain_llm import pretrain_tiny_llm, text_samples


def _labelled_text(tokenizer, input_ids, labels) -> str:
    return tokenizer.decode(input_ids[labels != IGNORE_INDEX])


def test_samples_label_the_answers_and_plain_descriptions(tiny_assets):
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets.llm)
    samples = text_samples(random.Random(0), tokenizer)
    kinds = {"chat": 0, "plain": 0}
    for _ in range(60):
        input_ids, labels = next(samples)
        assert input_ids.shape == labels.shape and input_ids[0] == tokenizer.bos_token_id
        text = tokenizer.decode(input_ids, skip_special_tokens=True)
        target = _labelled_text(tokenizer, input_ids, labels)
        if "USER:" in text:  # a Vicuna chat: only the assistant's replies and their </s> are targets
            kinds["chat"] += 1
            replies = [part.split("USER:")[0].strip() for part in text.split("ASSISTANT:")[1:]]
            assert target.replace("</s>", " ").split() == " ".join(replies).split()
            assert target.count("</s>") == len(replies)
        else:  # a plain description: every token after <s> is a target
            kinds["plain"] += 1
            assert "background" in text and target.strip() == text.strip()
    assert kinds["chat"] > 20 and kinds["plain"] > 10, kinds


def test_pretraining_lowers_the_loss_and_saves_the_model(tiny_assets, tmp_path):
    llm_dir = tmp_path / "llm"
    shutil.copytree(tiny_assets.llm, llm_dir)
    before = {k: v.clone() for k, v in LlamaForCausalLM.from_pretrained(llm_dir).state_dict().items()}
    losses = pretrain_tiny_llm(llm_dir, steps=40, batch_size=8)
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.5, (first, last)  # random init starts near ln(vocab) ~ 6.9
    after = LlamaForCausalLM.from_pretrained(llm_dir).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    again = shutil.copytree(tiny_assets.llm, tmp_path / "again")
    assert pretrain_tiny_llm(again, steps=40, batch_size=8) == losses  # same seed, same run
