"""The look-up probe: its patch features follow the tiny layout, its questions and batches are what it
says, and the command trains, scores and writes its history."""

from __future__ import annotations

import json
import random
import shutil

import torch
from transformers import AutoTokenizer

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.errors import run_main
from llava.tiny import lookup_probe
from llava.tiny.images import COLORS, POSITIONS, SHAPES, Scene, SceneObject
from llava.tiny.lookup_probe import GRID, ProbeFeatures, draw_conversation, embed_batch, held_out_accuracy


def _scene() -> Scene:
    return Scene(width=336, height=336, background="purple",
                 objects=(SceneObject(color="red", shape="circle", position="top left"),
                          SceneObject(color="red", shape="square", position="bottom right")),
                 text="AB", text_position="center", text_color="white")


def test_features_put_each_cell_on_its_patches():
    features = ProbeFeatures(width=8, noise=0.0, seed=0)
    grid = features(_scene()).reshape(2, GRID, GRID, 8)  # [crops, rows, cols, F]
    assert torch.equal(grid[0], grid[1])  # the tile repeats the base crop
    cell = list(POSITIONS)
    red, circle, square = list(COLORS).index("red"), SHAPES.index("circle"), SHAPES.index("square")
    purple = list(COLORS).index("purple")
    expected = {  # (row, col) of a patch -> its vector, written out from the scene by hand
        (0, 0): features.cell[cell.index("top left")] + features.color[red] + features.shape[circle] + 0.5 * features.in_cell[0],
        (1, 1): features.cell[cell.index("top left")] + features.color[red] + features.shape[circle] + 0.5 * features.in_cell[3],
        (5, 4): features.cell[cell.index("bottom right")] + features.color[red] + features.shape[square] + 0.5 * features.in_cell[2],
        (2, 3): features.cell[cell.index("center")] + features.background[purple] + features.text[0] + 0.5 * features.in_cell[1],
        (0, 2): features.cell[cell.index("top")] + features.background[purple] + 0.5 * features.in_cell[0],
    }
    for (row, col), vector in expected.items():
        torch.testing.assert_close(grid[0, row, col], vector)


def test_questions_name_one_object_and_skip_single_objects_when_asked(tiny_assets):
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets.llm)
    features = ProbeFeatures(width=8, noise=0.0, seed=0)
    rng = random.Random(0)
    questions = [draw_conversation(rng, features, tokenizer, "vicuna_v1", "shape", multi_object_only=True)[0]
                 for _ in range(40)]
    assert {q.num_objects for q in questions} <= {2, 3}
    at = questions[0].input_ids.index(IMAGE_TOKEN_INDEX)
    assert tokenizer.decode(questions[0].input_ids[:at]).rstrip().endswith("USER:")
    prompt = tokenizer.decode(questions[0].input_ids[at + 1:])
    assert prompt.strip().startswith("Where is the") and "ASSISTANT: At the" in prompt
    answer = [i for i in questions[0].labels if i != IGNORE_INDEX]
    assert answer[-1] == tokenizer.eos_token_id and tokenizer.decode(answer).startswith("At the")
    drawn = [draw_conversation(rng, features, tokenizer, "vicuna_v1", "color_and_shape", False) for _ in range(60)]
    assert 1 in {q.num_objects for q, _ in drawn}
    replay = random.Random(0)
    first_key = draw_conversation(replay, features, tokenizer, "vicuna_v1", "shape", True)[1]
    again = draw_conversation(random.Random(0), features, tokenizer, "vicuna_v1", "shape", True, exclude=frozenset([first_key]))
    assert again[1] != first_key  # an excluded (held-out) scene is never drawn


def test_batches_label_only_the_answer(tiny_assets):
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets.llm)
    features = ProbeFeatures(width=8, noise=0.0, seed=0)
    rng = random.Random(1)
    questions = [draw_conversation(rng, features, tokenizer, "vicuna_v1", "color_and_shape", False)[0] for _ in range(3)]
    embed = torch.nn.Embedding(len(tokenizer), 16)

    class Decoder:
        def get_input_embeddings(self):
            return embed

    embeds, labels, mask = embed_batch(questions, Decoder(), torch.nn.Linear(8, 16))
    image = features(_scene()).shape[0]
    lengths = [len(q.input_ids) - 1 + image for q in questions]
    assert embeds.shape == (3, max(lengths), 16) and mask.sum(1).tolist() == lengths
    for row, q, length in zip(range(3), questions, lengths):
        supervised = (labels[row] != IGNORE_INDEX).nonzero().flatten()
        answers = [label for label in q.labels if label != IGNORE_INDEX]
        assert labels[row, supervised].tolist() == answers and len(answers) > 0
        assert int(supervised.max()) == length - 1  # the answer ends the row; padding after it is ignored
        # each supervised position holds the token it is labelled with (the decoder shifts labels itself)
        torch.testing.assert_close(embeds[row, supervised], embed(labels[row, supervised]))


def test_multi_turn_conversations_ask_each_object_once_and_label_every_answer(tiny_assets):
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets.llm)
    features = ProbeFeatures(width=8, noise=0.0, seed=0)
    rng = random.Random(3)
    turn_counts = set()
    for _ in range(40):
        q = draw_conversation(rng, features, tokenizer, "vicuna_v1", "color_and_shape", False, turns=3)[0]
        text = tokenizer.decode([i for i in q.input_ids if i != IMAGE_TOKEN_INDEX])
        asked = [part.split("?")[0] for part in text.split("Where is the ")[1:]]
        answers = [i for i in q.labels if i == tokenizer.eos_token_id]  # each answer ends its turn with </s>
        assert len(set(asked)) == len(asked) == len(answers) <= q.num_objects
        assert q.input_ids.count(IMAGE_TOKEN_INDEX) == 1
        turn_counts.add(len(asked))
    assert turn_counts == {1, 2, 3}


def test_pictures_in_words_are_captions_without_image_tokens(tiny_assets):
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets.llm)
    rng = random.Random(4)
    questions = [draw_conversation(rng, None, tokenizer, "vicuna_v1", "color_and_shape", True)[0] for _ in range(4)]
    for q in questions:
        assert q.features is None and IMAGE_TOKEN_INDEX not in q.input_ids
        text = tokenizer.decode(q.input_ids)
        assert "USER: Picture: A" in text and "background" in text and "Where is the" in text
    embed = torch.nn.Embedding(len(tokenizer), 16)

    class Decoder:
        def get_input_embeddings(self):
            return embed

    embeds, labels, mask = embed_batch(questions, Decoder(), torch.nn.Linear(8, 16))
    assert mask.sum(1).tolist() == [len(q.input_ids) for q in questions]
    for row, q in enumerate(questions):
        assert labels[row, :len(q.labels)].tolist() == q.labels
        torch.testing.assert_close(embeds[row, :len(q.input_ids)], embed(torch.tensor(q.input_ids)))


class _Oracle:
    """A fake decoder whose logits at each position put all mass on the token `shift` places later
    (shift 1: the right next token; shift 0: the current token, always wrong for these answers)."""

    def __init__(self, questions, vocab: int, shift: int):
        self.embed = torch.nn.Embedding(vocab, 4)
        self.ids = []
        for q in questions:
            at = q.input_ids.index(IMAGE_TOKEN_INDEX)
            self.ids.append(q.input_ids[:at] + [0] * q.features.shape[0] + q.input_ids[at + 1:])
        self.vocab, self.shift = vocab, shift

    def get_input_embeddings(self):
        return self.embed

    def eval(self):
        return self

    train = eval

    def __call__(self, inputs_embeds, attention_mask):
        logits = torch.zeros(*inputs_embeds.shape[:2], self.vocab)
        for row, ids in enumerate(self.ids[:inputs_embeds.shape[0]]):
            for t in range(len(ids) - self.shift):
                logits[row, t, ids[t + self.shift]] = 1.0
        return type("Output", (), {"logits": logits})()


def test_scoring_counts_whole_answers_by_object_count(tiny_assets):
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets.llm)
    features = ProbeFeatures(width=8, noise=0.0, seed=0)
    rng = random.Random(2)
    questions = [draw_conversation(rng, features, tokenizer, "vicuna_v1", "color_and_shape", False)[0] for _ in range(30)]
    projector = torch.nn.Linear(8, 4)
    right = held_out_accuracy(questions, _Oracle(questions, len(tokenizer), 1), projector, batch_size=30)
    wrong = held_out_accuracy(questions, _Oracle(questions, len(tokenizer), 0), projector, batch_size=30)
    assert set(right) == {q.num_objects for q in questions}
    assert all(a == 1.0 for a in right.values()) and all(a == 0.0 for a in wrong.values())


def _recording(monkeypatch, name: str) -> list:
    """Replace lookup_probe.`name` by a wrapper that records each call's first argument."""
    calls, original = [], getattr(lookup_probe, name)
    def wrapper(first, *args, **kwargs):
        calls.append(first)
        return original(first, *args, **kwargs)
    monkeypatch.setattr(lookup_probe, name, wrapper)
    return calls


def _turns(conversation, eos_token_id: int) -> int:
    return conversation.labels.count(eos_token_id)  # each answer ends its turn with </s>


def test_command_trains_scores_and_writes_history(tiny_assets, tmp_path, monkeypatch):
    out = tmp_path / "probe.json"
    batches, held_out = _recording(monkeypatch, "embed_batch"), _recording(monkeypatch, "held_out_accuracy")
    assert lookup_probe.main(["--llm", str(tiny_assets.llm), "--steps", "2", "--batch-size", "16", "--eval-every", "1",
                              "--turns", "2", "--eval-questions", "12", "--json", str(out)]) == 0
    history = json.loads(out.read_text())["history"]
    assert [entry["step"] for entry in history] == [1, 2]
    assert all(0.0 <= a <= 1.0 for entry in history for a in entry["accuracy_by_objects"].values())
    eos = AutoTokenizer.from_pretrained(tiny_assets.llm).eos_token_id
    assert {_turns(q, eos) for q in held_out[0]} == {1}  # held-out questions are single-turn
    assert 2 in {_turns(q, eos) for q in batches[0]}  # training asks --turns questions where it can
    assert all(q.features is not None for q in batches[0])
    batches.clear()
    assert lookup_probe.main(["--llm", str(tiny_assets.llm), "--steps", "1", "--batch-size", "2",
                              "--eval-questions", "4", "--picture", "words"]) == 0
    assert batches and all(q.features is None for batch in batches for q in batch)


def test_bad_options_are_one_error_line(tiny_assets, tmp_path, capsys):
    for argv, needle in ((["--llm", str(tmp_path / "missing")], "--llm"),
                         (["--llm", str(tiny_assets.llm), "--steps", "0"], "--steps must be at least 1"),
                         (["--llm", str(tiny_assets.llm), "--turns", "0"], "--turns must be at least 1"),
                         (["--llm", str(tiny_assets.llm), "--conv-template", "plain"], "captioning layout"),
                         (["--llm", str(tiny_assets.llm), "--conv-template", "nope"], "--conv-template"),
                         (["--llm", str(tiny_assets.llm), "--learning-rate", "0"], "--learning-rate"),
                         (["--llm", str(tiny_assets.llm), "--noise", "-1"], "--noise"),
                         (["--llm", str(tiny_assets.llm), "--json", str(tmp_path / "no" / "x.json")], "--json")):
        assert run_main(lookup_probe.main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    assert run_main(lookup_probe.main, ["--llm", str(not_a_model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --llm") and "config.json" in err[0]
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_assets.llm, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert run_main(lookup_probe.main, ["--llm", str(damaged)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --llm {damaged}: ") and "model.safetensors is damaged" in err[0]
