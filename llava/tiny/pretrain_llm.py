"""Teach the tiny Vicuna some language before it meets images, as a real run starts from a pretrained LLM.

A random-init LLM trained on 200 multimodal samples for a few CPU minutes learns only the most common
answer and repeats it for every question. Real LLaVA training starts from Vicuna, which already reads
a question and answers in kind. `pretrain_tiny_llm` gives the tiny Vicuna that skill on text alone:
chats in the Vicuna-v1 template where the user describes a random scene in words (the captions'
wording) and asks one of the dataset's questions about it, the text-only facts, and plain scene
descriptions (what stage 1 asks the LLM to continue). Scenes are drawn
fresh (no image is rendered and none of the dataset's scenes is reused), so the LLM learns to read a
description, not the answers about the bundled pictures; grounding in pixels is left to the two stages.
"""

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from llava.constants import IGNORE_INDEX
from llava.train.preprocess import tokenize_conversation

from .dataset import COLOR_FACTS
from .images import describe_scene, random_scene, scene_qa_pairs

logger = logging.getLogger(__name__)

TEMPLATE = "vicuna_v1"


def _turn(role: str, value: str) -> dict[str, str]:
    return {"from": role, "value": value}


def text_conversations(rng: random.Random) -> Iterator[list[dict[str, str]]]:
    """Endless text-only chats: a scene described in words and questions about it, or a fact."""
    while True:
        if rng.random() < 0.1:
            question, answer = rng.choice(COLOR_FACTS)
            yield [_turn("human", question), _turn("gpt", answer)]
            continue
        scene = random_scene(rng, size=(336, 336))
        pairs = scene_qa_pairs(scene, rng)[: rng.randint(1, 2)]
        conversation = []
        for index, (question, answer) in enumerate(pairs):
            prefix = f"Picture: {describe_scene(scene)}\n" if index == 0 else ""
            conversation += [_turn("human", prefix + question), _turn("gpt", answer)]
        yield conversation


def text_samples(rng: random.Random, tokenizer) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (input_ids, labels) [T] pairs: Vicuna chats, and plain scene descriptions (a third).

    The plain descriptions are the captions' wording as free text, what stage 1's `plain` template
    asks the LLM to continue after the image.
    """
    chats = text_conversations(rng)
    while True:
        if rng.random() < 1 / 3:
            text = describe_scene(random_scene(rng, size=(336, 336))) + "\n"
            input_ids = torch.tensor(tokenizer(text).input_ids)  # [T], starts with <s>
            labels = input_ids.clone()
            labels[0] = IGNORE_INDEX
            yield input_ids, labels
        else:
            yield tokenize_conversation(next(chats), tokenizer, TEMPLATE, has_image=False)


def _batch(samples: Iterator, pad_token_id: int, batch_size: int) -> tuple[torch.Tensor, ...]:
    """(input_ids, labels, attention_mask), each [B, T], right-padded."""
    pairs = [next(samples) for _ in range(batch_size)]
    input_ids = pad_sequence([ids for ids, _ in pairs], batch_first=True, padding_value=pad_token_id)
    labels = pad_sequence([labels for _, labels in pairs], batch_first=True, padding_value=IGNORE_INDEX)
    attention_mask = pad_sequence([torch.ones_like(ids) for ids, _ in pairs], batch_first=True, padding_value=0)
    return input_ids, labels, attention_mask


def pretrain_tiny_llm(llm_dir: str | Path, steps: int, seed: int = 0, batch_size: int = 32,
                      learning_rate: float = 3e-3) -> list[float]:
    """Train the tiny LLM saved in `llm_dir` on text chats for `steps` AdamW steps, save it back.

    Returns the loss of every step. Deterministic for a given seed.
    """
    llm_dir = Path(llm_dir)
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    model = AutoModelForCausalLM.from_pretrained(llm_dir).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps,
                                                   pct_start=0.05)
    samples = text_samples(random.Random(seed), tokenizer)
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        progress = tqdm(range(steps), desc="pretraining the tiny LLM on text", unit="step")
        for _ in progress:
            input_ids, labels, attention_mask = _batch(samples, tokenizer.pad_token_id, batch_size)
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            progress.set_postfix(loss=f"{loss.item():.3f}")
    model.save_pretrained(llm_dir)
    logger.info("Pretrained the tiny LLM on text for %d steps: loss %.3f -> %.3f (mean of the last 50 steps)",
                steps, losses[0], sum(losses[-50:]) / len(losses[-50:]))
    return losses
