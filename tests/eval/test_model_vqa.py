"""`llava.eval.model_vqa` on the tiny checkpoints: batched greedy answers equal one-at-a-time ones
(`run_llava.answer`), LLaVA's chunking, resuming, and the skips and errors for bad questions."""

import json

import pytest

from llava.errors import DamagedInputError, run_main
from llava.eval.model_vqa import main, split_chunks
from llava.eval.run_llava import answer
from llava.mm_utils import load_image
from llava.model.builder import load_pretrained_model
from llava.serve.inference import default_conv_mode

QUESTIONS = ["What shape is in the image?", "What color is the background?", "How many shapes are there?",
             "Is there a shape on the left?", "What color is the circle?"]


def write_questions(path, images, text_only: int = 1) -> list[dict]:
    records = [{"question_id": i, "image": image.name, "text": QUESTIONS[i % len(QUESTIONS)]}
               for i, image in enumerate(images)]
    records += [{"question_id": f"text-{i}", "text": "Say hello."} for i in range(text_only)]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return records


def read_answers(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def images(tiny_assets):
    return sorted((tiny_assets.data / "images").glob("*.png"))[:5]


def args(tiny_assets, questions, answers, *extra):
    return ["--model-path", str(tiny_assets.llava_proxyv), "--question-file", str(questions), "--image-folder",
            str(tiny_assets.data / "images"), "--answers-file", str(answers), "--max_new_tokens", "6",
            "--device", "cpu", *map(str, extra)]


def test_batched_answers_equal_single_ones_and_a_rerun_resumes(tiny_assets, images, tmp_path):
    questions, answers = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    records = write_questions(questions, images)
    assert main(args(tiny_assets, questions, answers, "--batch-size", 4)) == 0
    written = read_answers(answers)
    assert [a["question_id"] for a in written] == [r["question_id"] for r in records]
    assert all(set(a) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} for a in written)
    assert written[0]["model_id"] == tiny_assets.llava_proxyv.name and written[0]["prompt"] == records[0]["text"]

    tokenizer, model, processor, _ = load_pretrained_model(str(tiny_assets.llava_proxyv), device="cpu")
    conv_mode = default_conv_mode(model.config, tokenizer)
    for record, written_answer in zip(records[:-1], written, strict=False):
        single = answer(tokenizer, model, processor, [load_image(images[record["question_id"]])], record["text"],
                        conv_mode, max_new_tokens=6)
        assert written_answer["text"] == single, record

    answers.write_text("".join(json.dumps(a) + "\n" for a in written[:2]))  # as if cut off after two
    assert main(args(tiny_assets, questions, answers, "--batch-size", 2)) == 0
    again = read_answers(answers)
    assert sorted(map(str, (a["question_id"] for a in again))) == sorted(map(str, (r["question_id"] for r in records)))
    assert [a["text"] for a in again[2:]] == [a["text"] for a in written[2:]]


def test_chunks_follow_llavas_split(tiny_assets, images, tmp_path):
    assert split_chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    questions = tmp_path / "q.jsonl"
    records = write_questions(questions, images[:3], text_only=0)
    parts = []
    for index in range(2):
        out = tmp_path / f"a{index}.jsonl"
        assert main(args(tiny_assets, questions, out, "--num-chunks", 2, "--chunk-idx", index)) == 0
        parts.append([a["question_id"] for a in read_answers(out)])
    assert parts == [[r["question_id"] for r in records[:2]], [records[2]["question_id"]]]


def test_missing_image_is_skipped_counted_and_retried(tiny_assets, images, tmp_path, capsys):
    questions, answers = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    write_questions(questions, images[:2], text_only=0)
    with questions.open("a") as handle:
        handle.write(json.dumps({"question_id": "lost", "image": "no_such.png", "text": "What is it?"}) + "\n")
    assert run_main(main, args(tiny_assets, questions, answers)) == 1
    assert "1 of 3 questions were skipped" in capsys.readouterr().err
    assert [a["question_id"] for a in read_answers(answers)] == [0, 1]  # the others are answered


def test_bad_question_line_names_file_and_line(tiny_assets, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "text": "Hi"}\n{"question_id": 2}\n')
    with pytest.raises(DamagedInputError, match=r"q.jsonl line 2 is not a question"):
        main(args(tiny_assets, questions, tmp_path / "a.jsonl"))
