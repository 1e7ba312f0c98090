"""A fast probe of whether a tiny decoder learns to find an object by name in a picture.

The tiny default never learns "Where is the red circle?" (it names the cell of one of the picture's
objects at random). This probe tells the decoder's part from the vision tower's: it replaces the tower
and its features by fixed random vectors, one per colour, shape, cell, patch-in-cell, background and
"text here", summed per patch on the tiny CLIP's 6x6 patch grid (base crop and its one tile, as the
tiny AnyRes layout gives, without its newline tokens), so the features are clean by construction. A
fresh 2-layer projector and the decoder (any family `AutoModelForCausalLM` loads, e.g. the tiny
Vicuna) are trained in float32 on position questions in a chat template (`--conv-template`, default
the tiny models' `vicuna_v1`: give your decoder's own), tokenized and labelled as training does
(`llava.train.preprocess`); `--turns N` asks about up to N of a training picture's objects, one per
turn, as LLaVA's multi-turn records do; `--picture words` gives the picture as its caption in words
instead, a text-only look-up (no projector). Accuracy on held-out scenes (single-turn questions,
never drawn for training; teacher-forced exact match of the whole answer) is printed by number of
objects in the picture, where a random pick among the objects scores 100% / 50% / 33%.

    python -m llava.tiny.lookup_probe --llm playground/tiny/tiny-vicuna --steps 2500 --multi-object-only

Findings with it are in docs/design.md, section 10. It is a study tool, not a test: 2500 steps take
about six minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from torch import nn
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import SeparatorStyle, get_conv_template
from llava.errors import DamagedInputError, UsageError, require_output_file, run_main
from llava.model.builder import check_checkpoint_files
from llava.tiny.images import (
    COLORS,
    POSITIONS,
    SHAPES,
    Scene,
    _unique_kinds,
    describe_scene,
    position_question,
    random_scene,
    scene_to_dict,
)
from llava.tiny.models import CLIP_IMAGE_SIZE, CLIP_PATCH_SIZE
from llava.train.check_data import load_tokenizer
from llava.train.preprocess import tokenize_conversation

logger = logging.getLogger(__name__)

GRID = CLIP_IMAGE_SIZE // CLIP_PATCH_SIZE  # patches per side of one crop (6)
CELL_PATCHES = GRID // 3  # patches per side of one scene cell (2)
CROPS = 2  # the base crop and its one tile: what AnyRes gives a square tiny picture
QUESTION_KINDS = ("color_and_shape", "shape")


class ProbeFeatures:
    """Fixed random patch features for a scene: each patch is the sum of its cell's, its place in the
    cell's, and either its object's colour and shape, or the background's (plus "text" where written)."""

    def __init__(self, width: int, noise: float, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        def table(rows: int) -> torch.Tensor:
            return torch.randn(rows, width, generator=generator)  # [rows, F]
        self.color, self.shape, self.background = table(len(COLORS)), table(len(SHAPES)), table(len(COLORS))
        self.cell, self.in_cell, self.text = table(len(POSITIONS)), table(CELL_PATCHES ** 2), table(1)
        self.width, self.noise = width, noise

    def cell_vector(self, scene: Scene, cell_index: int, cell: str) -> torch.Tensor:
        obj = scene.object_at(cell)
        if obj is not None:
            return self.cell[cell_index] + self.color[list(COLORS).index(obj.color)] + self.shape[SHAPES.index(obj.shape)]
        vector = self.cell[cell_index] + self.background[list(COLORS).index(scene.background)]
        return vector + self.text[0] if scene.text_position == cell else vector

    def __call__(self, scene: Scene, noise_generator: torch.Generator | None = None) -> torch.Tensor:
        """The scene's patch features, [CROPS * GRID * GRID, F], crops one after another, rows first."""
        grid = torch.zeros(GRID, GRID, self.width)  # [G, G, F]
        for cell_index, (cell, (row, col)) in enumerate(POSITIONS.items()):
            base = self.cell_vector(scene, cell_index, cell)
            for k in range(CELL_PATCHES ** 2):
                dr, dc = divmod(k, CELL_PATCHES)
                grid[row * CELL_PATCHES + dr, col * CELL_PATCHES + dc] = base + 0.5 * self.in_cell[k]
        crop = grid.reshape(GRID * GRID, self.width)  # [G*G, F]
        features = crop.repeat(CROPS, 1)  # [CROPS*G*G, F]
        return features + self.noise * torch.randn(features.shape, generator=noise_generator)


@dataclass
class ProbeConversation:
    """One picture and its position questions, tokenized; held-out ones ask one question."""

    features: torch.Tensor | None  # [N, F]; None when the picture is described in words
    input_ids: list[int]  # the conversation's token ids, IMAGE_TOKEN_INDEX where the image goes
    labels: list[int]  # the answer tokens' ids (end of turn included), IGNORE_INDEX elsewhere
    num_objects: int


def _named_objects(scene: Scene, kind: str) -> list:
    """The objects a `kind` question can name unambiguously."""
    if kind == "color_and_shape":
        return _unique_kinds(scene)
    shapes = [obj.shape for obj in scene.objects]
    return [obj for obj in scene.objects if shapes.count(obj.shape) == 1]


def scene_key(scene: Scene) -> str:
    return json.dumps(scene_to_dict(scene), sort_keys=True)


def draw_conversation(rng: random.Random, features: ProbeFeatures | None, tokenizer, template: str, kind: str,
                      multi_object_only: bool, noise_generator: torch.Generator | None = None,
                      exclude: frozenset[str] = frozenset(), turns: int = 1) -> tuple[ProbeConversation, str]:
    """A random scene (none of `exclude`'s keys) with position questions about up to `turns` of its
    objects, one per turn, tokenized in `template` as training tokenizes it; and the scene's key.
    With `features` None the picture is its caption in words ("Picture: A red circle at the top ..."),
    as the tiny LLM's text pretraining gives it, instead of patch features."""
    while True:
        scene = random_scene(rng)
        named = _named_objects(scene, kind)
        key = scene_key(scene)
        if named and (len(scene.objects) > 1 or not multi_object_only) and key not in exclude:
            break
    picture = DEFAULT_IMAGE_TOKEN if features is not None else f"Picture: {describe_scene(scene)}"
    messages = []
    for obj in rng.sample(named, min(turns, len(named))):
        question, answer = position_question(obj)
        if kind == "shape":
            question = f"Where is the {obj.shape}?"
        prefix = f"{picture}\n" if not messages else ""
        messages += [{"from": "human", "value": prefix + question}, {"from": "gpt", "value": answer}]
    input_ids, labels = tokenize_conversation(messages, tokenizer, template, has_image=features is not None)
    patches = features(scene, noise_generator) if features is not None else None
    conversation = ProbeConversation(patches, input_ids.tolist(), labels.tolist(), len(scene.objects))
    return conversation, key


def embed_batch(conversations: list[ProbeConversation], model, projector: nn.Module | None):
    """Right-padded input embeddings [B, T, D], labels [B, T] (answer tokens only) and attention mask [B, T].

    `projector` maps patch features to the decoder's width; None when the pictures are in words."""
    embed = model.get_input_embeddings()
    rows, labels = [], []
    for q in conversations:
        if q.features is None:  # the picture is in words
            rows.append(embed(torch.tensor(q.input_ids)))  # [T_i, D]
            labels.append(torch.tensor(q.labels))
            continue
        at = q.input_ids.index(IMAGE_TOKEN_INDEX)
        image = projector(q.features)  # [N, D]
        before, after = embed(torch.tensor(q.input_ids[:at])), embed(torch.tensor(q.input_ids[at + 1:]))
        row = torch.cat([before, image, after])  # [T_i, D]
        label = torch.tensor(q.labels[:at] + [IGNORE_INDEX] * image.shape[0] + q.labels[at + 1:])  # [T_i]
        rows.append(row)
        labels.append(label)
    length = max(row.shape[0] for row in rows)
    mask = torch.stack([torch.arange(length) < row.shape[0] for row in rows]).long()  # [B, T]
    embeds = torch.stack([nn.functional.pad(row, (0, 0, 0, length - row.shape[0])) for row in rows])  # [B, T, D]
    labels = torch.stack([nn.functional.pad(label, (0, length - label.shape[0]), value=IGNORE_INDEX)
                          for label in labels])  # [B, T]
    return embeds, labels, mask


@torch.no_grad()
def held_out_accuracy(questions: list[ProbeConversation], model, projector: nn.Module | None,
                      batch_size: int = 100) -> dict:
    """Teacher-forced exact match of the whole answer, by number of objects: {n: accuracy}."""
    model.eval()
    right: dict[int, int] = {}
    total: dict[int, int] = {}
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        embeds, labels, mask = embed_batch(chunk, model, projector)
        predicted = model(inputs_embeds=embeds, attention_mask=mask).logits[:, :-1].argmax(-1)  # [B, T-1]
        target = labels[:, 1:]
        exact = ((predicted == target) | (target == IGNORE_INDEX)).all(-1)  # [B]
        for q, ok in zip(chunk, exact.tolist()):
            right[q.num_objects] = right.get(q.num_objects, 0) + int(ok)
            total[q.num_objects] = total.get(q.num_objects, 0) + 1
    model.train()
    return {n: right[n] / total[n] for n in sorted(total)}


def run_probe(args) -> list[dict]:
    """Train projector and decoder on position questions; held-out accuracy every `eval_every` steps."""
    tokenizer, model = load_decoder(args.llm)
    hidden = model.get_input_embeddings().embedding_dim
    features, projector = None, None
    if args.picture == "features":
        features = ProbeFeatures(args.feature_width, args.noise, args.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed + 1)
            projector = nn.Sequential(nn.Linear(args.feature_width, hidden), nn.GELU(), nn.Linear(hidden, hidden))
    def draw(rng, noise, exclude=frozenset(), turns=1):
        return draw_conversation(rng, features, tokenizer, args.conv_template, args.question, args.multi_object_only,
                                 noise, exclude, turns)
    eval_rng, train_rng = random.Random(f"probe-eval-{args.seed}"), random.Random(f"probe-train-{args.seed}")
    eval_noise = torch.Generator().manual_seed(args.seed + 2)
    train_noise = torch.Generator().manual_seed(args.seed + 3)
    held_out, held_out_keys = zip(*(draw(eval_rng, eval_noise) for _ in range(args.eval_questions)))
    held_out, held_out_keys = list(held_out), frozenset(held_out_keys)
    parameters = list(model.parameters()) + (list(projector.parameters()) if projector is not None else [])
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=0.0)
    history = []
    progress = tqdm(range(1, args.steps + 1), desc="training on position questions", unit="step")
    for step in progress:
        batch = [draw(train_rng, train_noise, held_out_keys, args.turns)[0] for _ in range(args.batch_size)]
        embeds, labels, mask = embed_batch(batch, model, projector)
        loss = model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        progress.set_postfix(loss=f"{loss.item():.3f}")
        if step % args.eval_every == 0 or step == args.steps:
            accuracy = held_out_accuracy(held_out, model, projector)
            history.append({"step": step, "loss": loss.item(), "accuracy_by_objects": accuracy})
            progress.write(f"step {step}: " + ", ".join(f"{n} object(s) {a:.0%}" for n, a in accuracy.items()))
    return history


def load_decoder(name_or_path: str):
    """The tokenizer and the float32 decoder of `name_or_path` (`--llm`); problems are one error."""
    tokenizer = load_tokenizer(name_or_path, "--llm")
    if os.path.isdir(name_or_path):
        try:  # a damaged weights file is named before transformers fails on it without a name
            check_checkpoint_files(name_or_path)
        except DamagedInputError as error:
            raise DamagedInputError(f"--llm {name_or_path}: {error}") from error
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32)
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        raise DamagedInputError(f"--llm {name_or_path}: no causal language model loads from it ({error}); give a "
                                "decoder folder, e.g. playground/tiny/tiny-vicuna (python -m llava.tiny builds it).") from error
    return tokenizer, model.train()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm", required=True, help="decoder folder (e.g. playground/tiny/tiny-vicuna)")
    parser.add_argument("--conv-template", default="vicuna_v1", help="chat template of the prompts")
    parser.add_argument("--question", choices=QUESTION_KINDS, default="color_and_shape",
                        help="'Where is the red circle?' or 'Where is the circle?'")
    parser.add_argument("--picture", choices=("features", "words"), default="features",
                        help="the picture as fixed random patch features, or as its caption in words (text only: "
                             "does the decoder learn the look-up at all?)")
    parser.add_argument("--multi-object-only", action="store_true", help="ask only about pictures with 2-3 objects")
    parser.add_argument("--turns", type=int, default=1,
                        help="training conversations ask about up to this many of the picture's objects, one per turn "
                             "(the held-out questions are single-turn)")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-questions", type=int, default=300)
    parser.add_argument("--feature-width", type=int, default=64,
                        help="width of the patch features (--picture features)")
    parser.add_argument("--noise", type=float, default=0.3,
                        help="std of the Gaussian noise added to every patch feature (--picture features)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the accuracy history here")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser.parse_args(argv)


def check_args(args) -> None:
    try:
        template = get_conv_template(args.conv_template)
    except ValueError as error:
        raise UsageError(f"--conv-template: {error}") from None
    if template.sep_style is SeparatorStyle.PLAIN:
        raise UsageError(f"--conv-template {args.conv_template} is stage 1's captioning layout, which has no "
                         "question; give a chat template, e.g. your decoder's (vicuna_v1 for the tiny one).")
    for option in ("turns", "steps", "batch_size", "eval_every", "eval_questions", "feature_width"):
        if getattr(args, option) < 1:
            raise UsageError(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise UsageError(f"--learning-rate must be a positive number, got {args.learning_rate}")
    if not (math.isfinite(args.noise) and args.noise >= 0):
        raise UsageError(f"--noise must be a number >= 0, got {args.noise}")
    if args.json:
        require_output_file(args.json, "--json")


def main(argv=None) -> int:
    """Run the probe; problems raise `llava.errors.UserError` (see `run_main`)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_args(args)
    history = run_probe(args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"args": vars(args), "history": history}, handle, indent=1)
        logger.info("Wrote the accuracy history to %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
