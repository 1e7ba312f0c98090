"""Our package driven exactly the way lmms-eval's built-in `llava` model drives LLaVA.

`LmmsEvalLlava` below replays the calls of lmms-eval's `lmms_eval/models/simple/llava.py`
(`Llava.__init__`, `pad_sequence`, `generate_until`, `loglikelihood`) without lmms-eval's own
machinery (accelerate, task registry, request objects), so it runs where lmms-eval is not installed
(`test_lmms_eval_plugin.py` drives lmms-eval's class itself where it is): the same
imports, the same `load_pretrained_model` arguments, the same prompt building, left/right padding
by `tokenizer.padding_side`, pixels cast to float16, and the same `generate` / forward calls.
"""

import math

import pytest
import torch
from PIL import Image

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import get_model_name_from_path, process_images, tokenizer_image_token
from llava.model import LlavaConfig
from llava.model.builder import load_pretrained_model

TINY_CROP_ROWS = 37  # the tiny CLIP's 6 x 6 patches per crop, plus the crop's image-newline row

# Three requests whose images give 5, 4 and 3 AnyRes crops (base crop included).
IMAGE_SIZES = [(672, 672), (1008, 336), (300, 500)]
CONTEXTS = ["What is in the image?", "Describe the picture in detail, please.", "Colour?"]
MAX_NEW_TOKENS = 5


@pytest.fixture(scope="session")
def assets(tiny_assets):
    return tiny_assets


@pytest.fixture(scope="module")
def visuals():
    return [Image.new("RGB", size, (40 * i, 120, 200 - 40 * i)) for i, size in enumerate(IMAGE_SIZES)]


class LmmsEvalLlava:
    """The `llava` plugin's calls into our package, in its order and with its arguments."""

    def __init__(
        self,
        pretrained: str,
        conv_template: str = "vicuna_v1",
        device: str = "cpu",
        device_map: str = "auto",
        attn_implementation: str = "sdpa",
        **extra_model_args,
    ):
        llava_model_args = {"multimodal": True, **extra_model_args}
        if attn_implementation is not None:
            llava_model_args["attn_implementation"] = attn_implementation
        model_name = get_model_name_from_path(pretrained)
        self.tokenizer, self.model, self.image_processor, self.max_length = load_pretrained_model(
            pretrained, None, model_name, device_map=device_map, **llava_model_args
        )
        self.config = self.model.config
        self.model.eval()
        self.model.tie_weights()
        self.conv_template = conv_template
        self.device = torch.device(device)  # device_map "auto" with one process: the model is not moved

    def pad_sequence(self, input_ids, batch_first, padding_value):
        if self.tokenizer.padding_side == "left":
            input_ids = [torch.flip(ids, [0]) for ids in input_ids]
        input_ids = torch.nn.utils.rnn.pad_sequence(
            input_ids, batch_first=batch_first, padding_value=padding_value
        )
        if self.tokenizer.padding_side == "left":
            input_ids = torch.flip(input_ids, [1])
        return input_ids

    def images_to_device(self, visuals):
        image_tensor = process_images(visuals, self.image_processor, self.config)
        if type(image_tensor) is list:
            return [image.to(dtype=torch.float16, device=self.device) for image in image_tensor]
        return image_tensor.to(dtype=torch.float16, device=self.device)

    def prompt(self, context: str, num_images: int) -> str:
        if num_images and DEFAULT_IMAGE_TOKEN not in context:
            context = " ".join([DEFAULT_IMAGE_TOKEN] * num_images) + "\n" + context
        conv = conv_templates[self.conv_template].copy()
        conv.append_message(conv.roles[0], context)
        conv.append_message(conv.roles[1], None)
        return conv.get_prompt()

    def generate_until(self, contexts, visuals, gen_kwargs):
        """One batch of `generate_until`: (token ids returned by generate, decoded texts)."""
        image_tensor = self.images_to_device(visuals) if visuals else None
        question_input = [self.prompt(context, 1 if visuals else 0) for context in contexts]
        gen_kwargs = {"temperature": 0, "top_p": None, "num_beams": 1, "max_new_tokens": 1024, **gen_kwargs}
        gen_kwargs["image_sizes"] = [visual.size for visual in visuals]
        input_ids_list = [
            tokenizer_image_token(p, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
            for p in question_input
        ]
        pad_token_ids = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        input_ids = self.pad_sequence(input_ids_list, batch_first=True, padding_value=pad_token_ids).to(
            self.device
        )
        attention_masks = input_ids.ne(pad_token_ids).to(self.device)
        cont = self.model.generate(
            input_ids,
            attention_mask=attention_masks,
            pad_token_id=pad_token_ids,
            images=image_tensor,
            image_sizes=gen_kwargs["image_sizes"],
            do_sample=gen_kwargs["temperature"] > 0,  # the plugin: True if temperature > 0 else False
            temperature=gen_kwargs["temperature"],
            top_p=gen_kwargs["top_p"],
            num_beams=gen_kwargs["num_beams"],
            max_new_tokens=gen_kwargs["max_new_tokens"],
            use_cache=True,
        )
        return cont, self.tokenizer.batch_decode(cont, skip_special_tokens=True)

    def loglikelihood_ids(self, context: str, continuation: str):
        """The token ids `loglikelihood` builds: (context ids, context + continuation ids)."""
        conv = conv_templates[self.conv_template].copy()
        conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + context)
        conv.append_message(conv.roles[1], None)
        contxt_id = (
            tokenizer_image_token(conv.get_prompt(), self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
            .unsqueeze(0)
            .to(self.device)
        )
        conv.messages[1][1] = continuation
        input_ids = (
            tokenizer_image_token(conv.get_prompt(), self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
            .unsqueeze(0)
            .to(self.device)
        )
        return contxt_id, input_ids

    def loglikelihood_forward(self, contxt_id, input_ids, visual):
        """`loglikelihood`'s forward: labels mask the context; returns the model's outputs."""
        image = self.images_to_device([visual])
        labels = input_ids.clone()
        labels[0, : contxt_id.shape[1]] = -100
        with torch.inference_mode():
            return self.model(
                input_ids=input_ids,
                labels=labels,
                images=image,
                use_cache=True,
                image_sizes=[[visual.size[0], visual.size[1]]],
            )


@pytest.fixture(scope="module", params=["baseline", "proxyv"])
def plugin(request, assets):
    path = assets.llava if request.param == "baseline" else assets.llava_proxyv
    return LmmsEvalLlava(str(path))


def without_padding(ids: torch.Tensor, pad_token_id: int) -> list[int]:
    return [token for token in ids.tolist() if token != pad_token_id]


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize(
    "model_args, dtype",
    [
        ({}, torch.float32),
        ({"torch_dtype": "float16"}, torch.float16),
        ({"torch_dtype": "bfloat16"}, torch.bfloat16),
        ({"torch_dtype": "auto"}, torch.float32),
        ({"device_map": "cpu"}, torch.float32),
        ({"overwrite_config": {"image_aspect_ratio": "pad"}}, torch.float32),
    ],
    ids=["plugin-defaults", "float16", "bfloat16", "auto", "device-map-cpu", "overwrite-config"],
)
def test_loader_takes_the_plugins_arguments(model_args, dtype, assets):
    plugin = LmmsEvalLlava(str(assets.llava_proxyv), **model_args)
    assert plugin.model.dtype == dtype and plugin.model.device.type == "cpu"
    assert not plugin.model.training
    assert plugin.max_length == 4096
    assert plugin.config.image_aspect_ratio == model_args.get("overwrite_config", {}).get(
        "image_aspect_ratio", "anyres"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_plugin_default_cuda_device_map_is_a_clear_error_without_cuda(assets):
    with pytest.raises(ValueError, match="CUDA is not available"):
        LmmsEvalLlava(str(assets.llava_proxyv), device_map="cuda:0")


def test_use_flash_attention_2_argument_is_accepted(assets):
    plugin = LmmsEvalLlava(str(assets.llava_proxyv), use_flash_attention_2=False)
    assert plugin.config._attn_implementation == "sdpa"


def test_customized_config_is_used_or_rejected(assets):
    customized = LlavaConfig.from_pretrained(str(assets.llava))
    customized.image_aspect_ratio = "pad"
    try:
        plugin = LmmsEvalLlava(str(assets.llava), customized_config=customized)
    except ValueError:
        return  # a clear refusal is fine too
    assert plugin.config.image_aspect_ratio == "pad"


# ----------------------------------------------------------------------------- generate_until


@pytest.fixture(scope="module")
def one_by_one(plugin, visuals):
    """Each request alone, greedy and with two beams (padding cannot matter for one request)."""
    return {
        beams: [
            plugin.generate_until(
                [context], [visual], {"num_beams": beams, "max_new_tokens": MAX_NEW_TOKENS}
            )[0][0]
            for context, visual in zip(CONTEXTS, visuals)
        ]
        for beams in (1, 2)
    }


@pytest.mark.parametrize("padding_side, num_beams", [("left", 1), ("right", 1), ("left", 2)])
def test_batched_generation_equals_one_by_one(
    padding_side, num_beams, plugin, visuals, one_by_one, monkeypatch
):
    # lmms-eval pads on tokenizer.padding_side: "right" as our checkpoints save it, "left" where set.
    monkeypatch.setattr(plugin.tokenizer, "padding_side", padding_side)
    pixels = process_images(visuals, plugin.image_processor, plugin.config)
    assert isinstance(pixels, list) and [p.shape[0] for p in pixels] == [5, 4, 3]
    cont, texts = plugin.generate_until(
        CONTEXTS, visuals, {"num_beams": num_beams, "max_new_tokens": MAX_NEW_TOKENS}
    )
    pad = plugin.tokenizer.pad_token_id
    assert cont.shape[0] == 3 and cont.shape[1] <= MAX_NEW_TOKENS  # only new tokens come back
    for row, single in zip(cont, one_by_one[num_beams]):
        assert without_padding(row, pad) == without_padding(single, pad)
    assert texts == plugin.tokenizer.batch_decode(cont, skip_special_tokens=True)


def test_text_only_right_padded_batch_equals_one_by_one(plugin):
    contexts = ["Hello there, what is a square and where is it?", "Hi"]
    singles = [
        plugin.generate_until([context], [], {"max_new_tokens": MAX_NEW_TOKENS})[0][0] for context in contexts
    ]
    assert plugin.tokenizer.padding_side == "right"
    cont, _ = plugin.generate_until(contexts, [], {"max_new_tokens": MAX_NEW_TOKENS})
    pad = plugin.tokenizer.pad_token_id
    assert [without_padding(row, pad) for row in cont] == [without_padding(s, pad) for s in singles]


# ----------------------------------------------------------------------------- loglikelihood


def test_loglikelihood_loss_and_logits(plugin, visuals):
    contxt_id, input_ids = plugin.loglikelihood_ids(CONTEXTS[0], "The square is red.")
    outputs = plugin.loglikelihood_forward(contxt_id, input_ids, visuals[1])
    loss, logits = outputs["loss"], outputs["logits"]
    cont_toks = input_ids[:, contxt_id.shape[1] :]
    n = cont_toks.shape[1]
    assert torch.equal(input_ids[:, : contxt_id.shape[1]], contxt_id) and n > 1
    # Logits cover the image-expanded sequence: text + 4 crops x (36 patches + newline).
    assert logits.shape[1] == input_ids.shape[1] - 1 + 4 * TINY_CROP_ROWS
    # The continuation is the end of the sequence: row -n-1+i predicts continuation token i.
    expected = torch.nn.functional.cross_entropy(logits[0, -n - 1 : -1].float(), cont_toks[0])
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    # The plugin's own greedy check indexes rows by the un-expanded ids; it runs and gives a bool.
    greedy_tokens = logits.argmax(dim=-1)[:, contxt_id.shape[1] : input_ids.shape[1]]
    assert isinstance(bool((greedy_tokens == cont_toks).all()), bool)


def test_greedy_check_on_the_models_own_continuation(plugin, visuals):
    """Teacher-forcing the model's greedy continuation: the rows before it predict it exactly."""
    contxt_id, _ = plugin.loglikelihood_ids(CONTEXTS[2], "unused")
    cont, _ = plugin.generate_until([CONTEXTS[2]], [visuals[2]], {"max_new_tokens": MAX_NEW_TOKENS})
    cont_toks = cont[:, :MAX_NEW_TOKENS]
    input_ids = torch.cat([contxt_id, cont_toks], dim=1)
    logits = plugin.loglikelihood_forward(contxt_id, input_ids, visuals[2])["logits"]
    n = cont_toks.shape[1]
    assert bool((logits[:, -n - 1 : -1].argmax(dim=-1) == cont_toks).all())
