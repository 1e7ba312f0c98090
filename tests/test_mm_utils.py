"""AnyRes image processing, RGB conversion, image-token tokenization and the small helpers."""

from __future__ import annotations

import base64
import json
from io import BytesIO
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    _is_sized_clip_crop,
    _preprocess_one,
    divide_to_patches,
    expand2square,
    get_anyres_image_grid_shape,
    get_model_name_from_path,
    load_image,
    load_image_from_base64,
    parse_grid_pinpoints,
    process_anyres_image,
    process_images,
    resize_and_pad_image,
    select_best_resolution,
    to_rgb,
    tokenizer_image_token,
)
from tests.paths import GOLDEN

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def processor():
    """CLIP-L/336's processor (PIL backend): the golden folder's config, or the same settings."""
    if (GOLDEN / "clip" / "preprocessor_config.json").is_file():
        return CLIPImageProcessorPil.from_pretrained(GOLDEN / "clip")
    return CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})


def noise_image(width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def normalized(image):
    """What the CLIP processor gives for an image that is already 336x336: rescale + normalize."""
    pixels = np.asarray(image, dtype=np.float64) / 255.0
    return torch.tensor(((pixels - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1), dtype=torch.float32)


# ----------------------------------------------------------------------------- resolution choice


@pytest.mark.parametrize(
    ("size", "best", "grid", "crops"),
    [
        ((700, 350), (672, 336), (2, 1), 3),
        ((300, 900), (336, 1008), (1, 3), 4),
        ((1000, 1000), (672, 672), (2, 2), 5),
        ((336, 336), (336, 672), (1, 2), 3),  # every candidate keeps all pixels: least waste, first wins
        ((2000, 200), (1008, 336), (3, 1), 4),
    ],
)
def test_best_resolution_grid_and_crop_count(processor, size, best, grid, crops):
    assert select_best_resolution(size, PINPOINTS) == best
    assert get_anyres_image_grid_shape(size, PINPOINTS, 336) == grid
    assert get_anyres_image_grid_shape(size, str([tuple(p) for p in PINPOINTS]), 336) == grid
    pixels = process_anyres_image(noise_image(*size), processor, PINPOINTS)
    assert pixels.shape == (crops, 3, 336, 336) and pixels.dtype == torch.float32


def test_best_resolution_ties_prefer_least_waste():
    # 100x100 fits all of its pixels in both; the smaller candidate wastes less.
    assert select_best_resolution((100, 100), [(400, 400), (200, 200)]) == (200, 200)
    assert select_best_resolution((100, 100), [(200, 200), (200, 200)]) == (200, 200)
    with pytest.raises(ValueError, match="empty"):
        select_best_resolution((100, 100), [])


def test_grid_pinpoints_forms():
    assert parse_grid_pinpoints("[(336, 672), (672, 336)]", 336) == [(336, 672), (672, 336)]
    grid = parse_grid_pinpoints("(1x1),...,(3x3)", 336)
    assert len(grid) == 9 and grid[0] == (336, 336) and grid[-1] == (1008, 1008) and (336, 1008) in grid
    assert get_anyres_image_grid_shape((1000, 1000), "(1x1),...,(3x3)", 336) == (3, 3)
    for bad in ("(axb)", "[(336,)]", "not a list", []):
        with pytest.raises(ValueError, match="image_grid_pinpoints"):
            parse_grid_pinpoints(bad, 336)


# ----------------------------------------------------------------------------- pixels


def test_resize_and_pad_centres_on_black():
    padded = resize_and_pad_image(Image.new("RGB", (2000, 200), (255, 255, 255)), (1008, 336))
    assert padded.size == (1008, 336)
    # Width fills: 1008 x ceil(200 * 0.504) = 101 rows, pasted at y = (336 - 101) // 2 = 117.
    column = np.asarray(padded)[:, 500, 0]
    assert (column[:117] == 0).all() and (column[117:218] == 255).all() and (column[218:] == 0).all()
    tall = resize_and_pad_image(Image.new("RGB", (100, 400), (255, 255, 255)), (336, 672))
    row = np.asarray(tall)[300, :, 0]  # height fills: 168 columns at x = 84
    assert (row[:84] == 0).all() and (row[84:252] == 255).all() and (row[252:] == 0).all()


def test_divide_to_patches_raster_order():
    image = Image.new("RGB", (672, 672))
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    for index, color in enumerate(colors):
        image.paste(
            color, ((index % 2) * 336, (index // 2) * 336, (index % 2 + 1) * 336, (index // 2 + 1) * 336)
        )
    patches = divide_to_patches(image, 336)
    assert [patch.size for patch in patches] == [(336, 336)] * 4
    assert [patch.getpixel((10, 10)) for patch in patches] == colors


def test_anyres_crops_match_llava_next(processor):
    image = noise_image(700, 350, seed=1)
    pixels = process_anyres_image(image, processor, PINPOINTS)
    # Crop 0: the whole image resized (not padded) to 336x336, then only rescale + normalize.
    base = image.resize((336, 336), Image.Resampling.BICUBIC)
    torch.testing.assert_close(pixels[0], normalized(base), atol=1e-6, rtol=0)
    torch.testing.assert_close(pixels[0], processor.preprocess(base, return_tensors="pt")["pixel_values"][0])
    # Crops 1, 2: the left and right tiles of the image resized and padded to 672x336.
    padded = resize_and_pad_image(image, (672, 336))
    torch.testing.assert_close(pixels[1], normalized(padded.crop((0, 0, 336, 336))), atol=1e-6, rtol=0)
    torch.testing.assert_close(pixels[2], normalized(padded.crop((336, 0, 672, 336))), atol=1e-6, rtol=0)


def test_sized_crops_take_the_fast_path_with_the_processors_exact_values(processor):
    """AnyRes crops skip the processor's generic path; the values must stay bit-identical to it."""
    for crop in [noise_image(336, 336, seed=seed) for seed in range(4)] + [Image.new("RGB", (336, 336), (255, 0, 9))]:
        assert _is_sized_clip_crop(crop, processor)
        expected = processor.preprocess(crop, return_tensors="pt")["pixel_values"][0]
        assert torch.equal(_preprocess_one(crop, processor), expected)
    image = noise_image(700, 350, seed=5)
    pixels = process_anyres_image(image, processor, PINPOINTS)
    reference = processor.preprocess([image.resize((336, 336)), *divide_to_patches(resize_and_pad_image(image, (672, 336)), 336)],
                                     return_tensors="pt")["pixel_values"]
    assert torch.equal(pixels, reference)


@pytest.mark.parametrize("size", [(336, 336), (300, 300), (500, 500)])
def test_one_tile_grid_crops_match_the_processor(processor, size):
    """On a one-tile grid a square image's tile may equal its base (computed once): both match the processor."""
    image = noise_image(*size, seed=6)
    pixels = process_anyres_image(image, processor, [[336, 336]])
    crops = [image.resize((336, 336)), resize_and_pad_image(image, (336, 336))]
    assert torch.equal(pixels, processor.preprocess(crops, return_tensors="pt")["pixel_values"])


def test_unsized_or_foreign_inputs_keep_the_processors_generic_path(processor):
    other_crop = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 224, "width": 224})
    no_normalize = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_normalize=False)
    assert not _is_sized_clip_crop(noise_image(350, 336), processor)
    assert not _is_sized_clip_crop(noise_image(336, 336).convert("L"), processor)
    assert not _is_sized_clip_crop(noise_image(336, 336), other_crop)
    assert not _is_sized_clip_crop(noise_image(336, 336), no_normalize)
    assert _preprocess_one(noise_image(336, 336), other_crop).shape == (3, 224, 224)
    assert torch.equal(_preprocess_one(noise_image(350, 336), processor),
                       processor.preprocess(noise_image(350, 336), return_tensors="pt")["pixel_values"][0])


def test_anyres_tall_image_tiles_top_to_bottom(processor):
    image = noise_image(300, 900, seed=2)
    pixels = process_anyres_image(image, processor, PINPOINTS)
    padded = resize_and_pad_image(image, (336, 1008))
    for index in range(3):
        tile = padded.crop((0, 336 * index, 336, 336 * (index + 1)))
        torch.testing.assert_close(pixels[1 + index], normalized(tile), atol=1e-6, rtol=0)


@pytest.mark.skipif(not GOLDEN.is_dir(), reason="golden folder not present")
def test_golden_images_crop_counts(processor):
    cases = json.loads((GOLDEN / "cases.json").read_text())["cases"]
    for case in cases:
        image = load_image(GOLDEN / case["image"])
        assert list(image.size) == case["image_size"]
        assert process_anyres_image(image, processor, PINPOINTS).shape[0] == case["num_crops"]


def test_golden_processor_settings(processor):
    assert processor.size["shortest_edge"] == 336 and processor.crop_size["height"] == 336
    assert np.allclose(processor.image_mean, CLIP_MEAN) and np.allclose(processor.image_std, CLIP_STD)


def test_expand2square():
    wide = expand2square(Image.new("RGB", (4, 2), (255, 0, 0)), (0, 0, 255))
    assert wide.size == (4, 4)
    assert [wide.getpixel((0, y)) for y in range(4)] == [(0, 0, 255), (255, 0, 0), (255, 0, 0), (0, 0, 255)]
    tall = expand2square(Image.new("RGB", (1, 3), (255, 0, 0)), (0, 0, 255))
    assert [tall.getpixel((x, 0)) for x in range(3)] == [(0, 0, 255), (255, 0, 0), (0, 0, 255)]
    square = Image.new("RGB", (3, 3))
    assert expand2square(square, (0, 0, 0)) is square


def test_process_images_modes(processor):
    anyres = SimpleNamespace(image_aspect_ratio="anyres", image_grid_pinpoints=PINPOINTS)
    same = process_images([noise_image(700, 350), noise_image(800, 400, seed=3)], processor, anyres)
    assert isinstance(same, torch.Tensor) and same.shape == (2, 3, 3, 336, 336)
    mixed = process_images([noise_image(700, 350), noise_image(1000, 1000)], processor, anyres)
    assert isinstance(mixed, list) and [x.shape[0] for x in mixed] == [3, 5]

    white = Image.new("RGB", (700, 350), (255, 255, 255))
    padded = process_images([white], processor, SimpleNamespace(image_aspect_ratio="pad"))
    assert padded.shape == (1, 3, 336, 336)
    # Padded to 700x700 with the mean colour int(mean * 255) = (122, 116, 104); white rows 84..251.
    mean_colour = normalized(Image.new("RGB", (336, 336), (122, 116, 104)))
    torch.testing.assert_close(padded[0, :, :80], mean_colour[:, :80], atol=1e-6, rtol=0)
    torch.testing.assert_close(
        padded[0, :, 100:230], normalized(white.resize((336, 130)))[:, :130], atol=1e-6, rtol=0
    )

    square = process_images([noise_image(700, 350)], processor, SimpleNamespace(image_aspect_ratio=None))
    assert square.shape == (1, 3, 336, 336)
    assert process_images([noise_image(50, 60)], processor, SimpleNamespace()).shape == (1, 3, 336, 336)


def test_process_images_bad_config(processor):
    with pytest.raises(ValueError, match="Unsupported image_aspect_ratio 'anyres_max_9'"):
        process_images([noise_image(10, 10)], processor, SimpleNamespace(image_aspect_ratio="anyres_max_9"))
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        process_images([noise_image(10, 10)], processor, SimpleNamespace(image_aspect_ratio="anyres"))
    with pytest.raises(ValueError, match="at least one image"):
        process_images([], processor, SimpleNamespace(image_aspect_ratio="pad"))


# ----------------------------------------------------------------------------- RGB conversion


def _pixel(image):
    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == image.size
    return converted.getpixel((0, 0))


def test_to_rgb_composites_transparency_on_white():
    assert _pixel(Image.new("RGBA", (2, 2), (255, 0, 0, 0))) == (255, 255, 255)
    assert _pixel(Image.new("RGBA", (2, 2), (255, 0, 0, 255))) == (255, 0, 0)
    half = _pixel(Image.new("RGBA", (2, 2), (0, 0, 0, 128)))
    assert all(126 <= channel <= 128 for channel in half)
    assert _pixel(Image.new("LA", (2, 2), (0, 0))) == (255, 255, 255)
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([10, 20, 30] * 256)
    assert _pixel(palette) == (10, 20, 30)
    palette.info["transparency"] = 0
    assert _pixel(palette) == (255, 255, 255)


def test_to_rgb_other_modes():
    assert _pixel(Image.new("L", (2, 2), 77)) == (77, 77, 77)
    assert _pixel(Image.new("1", (2, 2), 1)) == (255, 255, 255)
    assert _pixel(Image.new("CMYK", (2, 2), (0, 0, 0, 0))) == (255, 255, 255)
    assert _pixel(Image.new("YCbCr", (2, 2), (255, 128, 128))) == (255, 255, 255)


def test_to_rgb_scales_high_bit_depth():
    assert _pixel(Image.new("I;16", (2, 2), 25700)) == (100, 100, 100)  # 25700 / 257
    assert _pixel(Image.new("I;16", (2, 2), 65535)) == (255, 255, 255)
    assert _pixel(Image.fromarray(np.full((2, 2), 51400, dtype=np.int32), mode="I")) == (200, 200, 200)
    assert _pixel(Image.fromarray(np.full((2, 2), 90, dtype=np.int32), mode="I")) == (90, 90, 90)
    assert _pixel(Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32), mode="F")) == (128, 128, 128)


def test_every_mode_goes_through_process_images(processor):
    config = SimpleNamespace(image_aspect_ratio="pad")
    images = [Image.new(mode, (20, 10)) for mode in ("RGBA", "P", "L", "I;16", "I", "F", "CMYK", "LA", "1")]
    pixels = process_images(images, processor, config)
    assert pixels.shape == (len(images), 3, 336, 336) and torch.isfinite(pixels).all()
    with pytest.raises(ValueError, match="PIL image"):
        to_rgb(np.zeros((2, 2, 3)))


# ----------------------------------------------------------------------------- tokens


def test_tokenizer_image_token_single_bos(tiny_tokenizer):
    prompt = "A red<image>\nWhat is it?<image>done"
    ids = tokenizer_image_token(prompt, tiny_tokenizer)
    first, second, third = (tiny_tokenizer(chunk).input_ids for chunk in prompt.split("<image>"))
    assert ids == first + [IMAGE_TOKEN_INDEX] + second[1:] + [IMAGE_TOKEN_INDEX] + third[1:]
    assert ids.count(tiny_tokenizer.bos_token_id) == 1 and ids[0] == tiny_tokenizer.bos_token_id
    assert [i for i, token in enumerate(ids) if token == IMAGE_TOKEN_INDEX] == [
        len(first),
        len(first) + len(second),
    ]
    leading = tokenizer_image_token("<image>\nHi", tiny_tokenizer, return_tensors="pt")
    assert leading.dtype == torch.long and leading[:2].tolist() == [
        tiny_tokenizer.bos_token_id,
        IMAGE_TOKEN_INDEX,
    ]
    assert tokenizer_image_token("<image>", tiny_tokenizer) == [
        tiny_tokenizer.bos_token_id,
        IMAGE_TOKEN_INDEX,
    ]
    with pytest.raises(ValueError, match="return_tensors"):
        tokenizer_image_token("hi", tiny_tokenizer, return_tensors="np")


def test_tokenizer_image_token_without_bos(tiny_tokenizer):
    backend = json.loads(tiny_tokenizer.backend_tokenizer.to_str())
    backend["post_processor"] = None
    no_bos = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(backend)), bos_token="<s>"
    )
    ids = tokenizer_image_token("red<image>blue", no_bos)
    assert ids == no_bos("red").input_ids + [IMAGE_TOKEN_INDEX] + no_bos("blue").input_ids
    assert no_bos.bos_token_id not in ids


@pytest.mark.skipif(not GOLDEN.is_dir(), reason="golden folder not present")
def test_tokenizer_image_token_matches_golden_ids():
    tokenizer = PreTrainedTokenizerFast.from_pretrained(GOLDEN / "spatial_s1")
    data = json.loads((GOLDEN / "cases.json").read_text())
    text = data["prompt_text"]
    prompt = text["prefix"] + "<image>" + text["suffix"] + " " + text["answer"]
    assert tokenizer_image_token(prompt, tokenizer) == data["cases"][0]["input_ids"]


def test_get_model_name_from_path():
    assert get_model_name_from_path("/models/llava-v1.6-vicuna-7b/") == "llava-v1.6-vicuna-7b"
    assert get_model_name_from_path("runs/proxyv-7b/checkpoint-500") == "proxyv-7b_checkpoint-500"
    assert get_model_name_from_path("liuhaotian/llava-v1.5-7b") == "llava-v1.5-7b"
    with pytest.raises(ValueError, match="empty path"):
        get_model_name_from_path("/")


def test_keywords_stopping_criteria_batched(tiny_tokenizer):
    prompt = torch.tensor([tiny_tokenizer("USER: hi ASSISTANT:").input_ids] * 3)
    stop = KeywordsStoppingCriteria(["</s>", "###"], tiny_tokenizer, prompt)
    reply = tiny_tokenizer("A red square and a blue circle at the top", add_special_tokens=False).input_ids
    hashes = tiny_tokenizer("red ###", add_special_tokens=False).input_ids
    length = len(reply) + 1
    generated = torch.tensor(
        [
            reply + [tiny_tokenizer.eos_token_id],  # ends with the EOS keyword's id
            reply + reply[-1:],  # no keyword
            reply[: length - len(hashes)] + hashes,  # ends with the text "###"
        ]
    )
    done = stop(torch.cat([prompt, generated], dim=1), None)
    assert done.dtype == torch.bool and done.tolist() == [True, False, True]
    assert not stop(prompt, None).any()  # the prompt alone never stops generation
    with pytest.raises(ValueError, match="non-empty keywords"):
        KeywordsStoppingCriteria([], tiny_tokenizer, prompt)


# ----------------------------------------------------------------------------- loading


def test_load_image_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(missing)
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        load_image(str(broken))


def test_load_image_converts_to_rgb(tmp_path):
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (5, 4), (0, 0, 255, 0)).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (5, 4) and image.getpixel((0, 0)) == (255, 255, 255)


def test_load_image_from_base64():
    buffer = BytesIO()
    Image.new("RGB", (3, 2), (1, 2, 3)).save(buffer, format="PNG")
    image = load_image_from_base64(base64.b64encode(buffer.getvalue()).decode())
    assert image.size == (3, 2) and image.convert("RGB").getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(ValueError, match="base64"):
        load_image_from_base64("!!not base64!!")
