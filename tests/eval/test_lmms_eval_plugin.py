"""lmms-eval's own, unchanged `llava` model class on the tiny baseline and ProxyV checkpoints.

`lmms_eval.models.simple.llava.Llava` is built as `python -m lmms_eval --model llava --model_args
pretrained=...,device=cpu,device_map=auto` builds it (one process, no accelerate launch), and given
`Instance` requests as lmms-eval's tasks make them (a deep copy of the task's generation kwargs per
request; `doc_to_visual` looks the image up in `task_dict[task][split][doc_id]`). Its answers are
compared with our own computation of the same thing, one request at a time:

* `generate_until` at batch sizes 1 and 2: equal to each other and to greedy `model.generate` on
  our prompt (`llava.eval.run_llava.build_prompt`), with pixels in float16 as the plugin sends them;
  the four images give 5, 4, 3 and 4 crops, so both batches of two mix crop counts;
* `loglikelihood`: its number is the mean cross-entropy of the continuation tokens (lmms-eval
  ranks multiple-choice options with argmin over it), equal to minus the mean of the log-softmax
  over those tokens from our own forward; its greedy flag equals the argmax comparison over the
  rows the plugin slices (see docs/lmms_eval.md, "Known limitations", for why those rows are not
  the continuation's).

Skips when lmms-eval is not installed (install lines in docs/lmms_eval.md).
"""

import copy

import pytest
import torch
from PIL import Image

from llava.conversation import get_conv_template
from llava.eval.run_llava import build_prompt
from llava.mm_utils import process_images, tokenizer_image_token
from llava.serve.inference import generation_kwargs, with_image_placeholders
from tests.optional import import_extra

TINY_CROP_ROWS = 37  # the tiny CLIP's 6 x 6 patches per crop, plus the crop's image-newline row

lmms_eval_llava = import_extra("lmms_eval.models.simple.llava")
Instance = import_extra("lmms_eval.api.instance").Instance

TASK, SPLIT = "tiny_task", "test"
CONV_TEMPLATE = "vicuna_v1"
MAX_NEW_TOKENS = 6
# (image size, colour, question). Saturated colours make the random tiny models answer each
# image differently; lmms-eval sorts a batch by question length, longest first, so the batches of
# two are (5 crops, 4 crops) and (3 crops, 4 crops), and the answers come back in request order.
DOCS = [
    ((300, 500), (0, 0, 255), "Where is the circle in this picture?"),
    ((672, 672), (255, 0, 0), "Describe the picture in detail, please, with every shape and its colour."),
    ((336, 1008), (255, 255, 0), "Colour?"),
    ((1008, 336), (255, 255, 255), "How many shapes are there in the picture, and which ones?"),
]
CROPS = [3, 5, 4, 4]
# lmms-eval tasks' generation kwargs (e.g. mmbench's), with a short answer.
TASK_GEN_KWARGS = {"until": ["ASSISTANT:"], "max_new_tokens": MAX_NEW_TOKENS, "temperature": 0, "top_p": 1.0,
                   "num_beams": 1, "do_sample": False}


def doc_to_visual(doc: dict) -> list:
    """A task's `doc_to_visual`: the document's images."""
    return [doc["image"]]


@pytest.fixture(scope="module")
def task_docs() -> list[dict]:
    return [{"image": Image.new("RGB", size, colour), "question": question} for size, colour, question in DOCS]


@pytest.fixture(scope="module", params=["baseline", "proxyv"])
def checkpoint(request, tiny_assets) -> str:
    return str(tiny_assets.llava if request.param == "baseline" else tiny_assets.llava_proxyv)


def lmms_eval_model(checkpoint: str, task_docs: list[dict], batch_size: int):
    """lmms-eval's `Llava` as `--model_args pretrained=CHECKPOINT,conv_template=vicuna_v1,device=cpu,
    device_map=auto --batch_size N` makes it, with the task's documents where its requests look."""
    lm = lmms_eval_llava.Llava(pretrained=checkpoint, conv_template=CONV_TEMPLATE, device="cpu", device_map="auto",
                               batch_size=batch_size)
    lm.task_dict = {TASK: {SPLIT: task_docs}}
    return lm


def generate_requests(task_docs: list[dict]) -> list:
    """One `generate_until` request per document, as `ConfigurableTask.construct_requests` makes them."""
    return [
        Instance(request_type="generate_until",
                 arguments=(doc["question"], copy.deepcopy(TASK_GEN_KWARGS), doc_to_visual, doc_id, TASK, SPLIT),
                 idx=0, metadata={"task": TASK, "doc_id": doc_id, "repeats": 1})
        for doc_id, doc in enumerate(task_docs)
    ]


def loglikelihood_request(doc_id: int, context: str, continuation) -> object:
    """A `loglikelihood` request; `continuation` is a string or a `doc_to_target` function."""
    return Instance(request_type="loglikelihood", arguments=(context, continuation, doc_to_visual, doc_id, TASK, SPLIT),
                    idx=0, metadata={"task": TASK, "doc_id": doc_id, "repeats": 1})


def float16_pixels(images: list, lm):
    """`process_images` for the model, cast to float16 as the plugin casts them."""
    pixels = process_images(images, lm._image_processor, lm.model.config)
    return [crops.half() for crops in pixels] if isinstance(pixels, list) else pixels.half()


@torch.inference_mode()
def our_answer(lm, image, question: str) -> str:
    """Greedy answer from our own prompt building and `model.generate`, one request alone."""
    input_ids = tokenizer_image_token(build_prompt(question, 1, CONV_TEMPLATE), lm.tokenizer, return_tensors="pt")
    output_ids = lm.model.generate(input_ids[None], images=float16_pixels([image], lm), image_sizes=[image.size],
                                   **generation_kwargs(lm.tokenizer, 0.0, MAX_NEW_TOKENS))
    return lm.tokenizer.decode(output_ids[0], skip_special_tokens=True)


def our_ids(lm, question: str, continuation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Our token ids for the prompt and for the prompt followed by `continuation` as the reply."""
    conversation = get_conv_template(CONV_TEMPLATE)
    conversation.append_message(conversation.roles[0], with_image_placeholders(question, 1))
    conversation.append_message(conversation.roles[1], continuation)
    full = tokenizer_image_token(conversation.get_prompt(), lm.tokenizer, return_tensors="pt")
    context = tokenizer_image_token(build_prompt(question, 1, CONV_TEMPLATE), lm.tokenizer, return_tensors="pt")
    return context, full


@torch.inference_mode()
def our_loglikelihood(lm, image, question: str, continuation: str) -> tuple[float, bool, int]:
    """(mean negative log-likelihood of the continuation tokens, the plugin's greedy check, the
    number of logit rows) from our own forward without labels."""
    context, full = our_ids(lm, question, continuation)
    assert torch.equal(full[: len(context)], context)
    logits = lm.model(input_ids=full[None], images=float16_pixels([image], lm), image_sizes=[image.size]).logits[0]
    targets = full[len(context):]
    n = len(targets)
    log_probs = torch.log_softmax(logits[-n - 1 : -1].float(), dim=-1)  # row t predicts token t + 1
    mean_nll = -log_probs.gather(-1, targets[:, None]).mean().item()
    plugin_rows_greedy = bool((logits.argmax(-1)[len(context) : len(full)] == targets).all())
    return mean_nll, plugin_rows_greedy, logits.shape[0]


# ----------------------------------------------------------------------------- generate_until


@pytest.fixture(scope="module")
def answers_at_batch_1(checkpoint, task_docs):
    return lmms_eval_model(checkpoint, task_docs, batch_size=1).generate_until(generate_requests(task_docs))


def test_images_give_different_crop_counts(checkpoint, task_docs):
    lm = lmms_eval_model(checkpoint, task_docs, batch_size=1)
    pixels = float16_pixels([doc["image"] for doc in task_docs], lm)
    assert isinstance(pixels, list) and [crops.shape[0] for crops in pixels] == CROPS


def test_generate_until_at_batch_1_equals_our_generate(checkpoint, task_docs, answers_at_batch_1):
    lm = lmms_eval_model(checkpoint, task_docs, batch_size=1)
    expected = [our_answer(lm, doc["image"], doc["question"]) for doc in task_docs]
    assert answers_at_batch_1 == expected
    assert len(set(expected)) == len(expected)  # a request answered with another's answer would show


def test_generate_until_at_batch_2_equals_batch_1(checkpoint, task_docs, answers_at_batch_1):
    lm = lmms_eval_model(checkpoint, task_docs, batch_size=2)
    assert lm.tokenizer.padding_side == "right"  # as our checkpoints save it; generate re-pads on the left
    assert lm.generate_until(generate_requests(task_docs)) == answers_at_batch_1


# ----------------------------------------------------------------------------- loglikelihood


def test_loglikelihood_equals_our_forward(checkpoint, task_docs):
    lm = lmms_eval_model(checkpoint, task_docs, batch_size=1)
    question = "Which colour is the background?\nA. red\nB. green\nAnswer with the option's letter."
    requests = [
        loglikelihood_request(3, question, " B"),  # a multiple-choice option, target delimiter included
        loglikelihood_request(1, question, lambda doc: "The background is red."),  # a doc_to_target function
    ]
    results = lm.loglikelihood(requests)
    for (value, is_greedy), (doc_id, continuation) in zip(results, [(3, " B"), (1, "The background is red.")]):
        doc = task_docs[doc_id]
        mean_nll, plugin_rows_greedy, rows = our_loglikelihood(lm, doc["image"], question, continuation)
        assert value == pytest.approx(mean_nll, abs=1e-5)
        assert value > 0  # a loss, not a log-probability
        assert is_greedy is plugin_rows_greedy
        context, full = our_ids(lm, question, continuation)
        # The rows the plugin compares lie inside the image block: each <image> became crops x (36 patches + newline) rows.
        assert rows == len(full) - 1 + CROPS[doc_id] * TINY_CROP_ROWS


def test_customized_config_json_path(tiny_assets, task_docs, tmp_path):
    """`customized_config=my.json` in `--model_args` reaches our loader as a path and is used."""
    config = lmms_eval_model(str(tiny_assets.llava), task_docs, batch_size=1).config
    config.image_aspect_ratio = "pad"
    config.to_json_file(tmp_path / "custom.json")
    lm = lmms_eval_llava.Llava(pretrained=str(tiny_assets.llava), device="cpu", device_map="auto",
                               customized_config=str(tmp_path / "custom.json"))
    assert lm.config.image_aspect_ratio == "pad"
    lm.task_dict = {TASK: {SPLIT: task_docs}}
    assert lm.generate_until(generate_requests(task_docs[:1]))[0] == our_answer(lm, task_docs[0]["image"],
                                                                               task_docs[0]["question"])
