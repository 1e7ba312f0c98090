"""`llava.serve.prefill_report`: sizes, FLOPs and the dense comparison under each web-demo answer, on
the tiny ProxyV checkpoint against the tiny baseline checkpoint of the same architecture."""

import pytest
from transformers import AutoConfig

from llava.eval.flops import analytic_prefill_flops
from llava.eval.run_llava import build_prompt
from llava.mm_utils import tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.serve.inference import load_images, pixels_for_model
from llava.serve.prefill_report import PrefillReport, prefill_report, time_against_dense


@pytest.fixture(scope="module")
def proxyv(tiny_assets):
    return load_pretrained_model(str(tiny_assets.llava_proxyv), None, None, device="cpu")


def _prompt(tokenizer, model, processor, paths):
    images = load_images(",".join(str(path) for path in paths))
    ids = tokenizer_image_token(build_prompt("What is in the image?", len(images), "vicuna_v1"), tokenizer,
                                return_tensors="pt")
    return ids, pixels_for_model(images, processor, model), [image.size for image in images]


def test_report_counts_the_prompt_and_compares_with_the_baseline_checkpoint(proxyv, tiny_assets):
    tokenizer, model, processor, _ = proxyv
    paths = sorted((tiny_assets.data / "images").glob("*.png"))[:2]
    ids, pixels, _ = _prompt(tokenizer, model, processor, paths)
    report = prefill_report(model, ids, pixels, prefill_s=0.25)
    crops = sum(image.shape[0] for image in pixels) if isinstance(pixels, list) else pixels.shape[0] * pixels.shape[1]
    patches = (model.get_vision_tower().config.image_size // model.get_vision_tower().config.patch_size) ** 2
    assert (report.crops, report.vision_tokens) == (crops, crops * patches)
    assert report.text_tokens == int((ids >= 0).sum())
    assert report.flops == sum(analytic_prefill_flops(model.config, report.text_tokens, crops).values())
    baseline = AutoConfig.from_pretrained(tiny_assets.llava)  # the same weights' shapes, trained dense
    assert report.dense_flops == sum(analytic_prefill_flops(baseline, report.text_tokens, crops).values())
    saving = round(100 * (1 - report.flops / report.dense_flops))
    assert 0 < saving < 100 and f"{saving}% fewer than the dense model" in report.line()
    assert report.line().startswith(f"prefill 0.25 s · {crops * patches:,} vision tokens in {crops} crops".replace(",", "\u2009"))


def test_dense_model_has_nothing_to_compare(tiny_assets):
    tokenizer, model, processor, _ = load_pretrained_model(str(tiny_assets.llava), None, None, device="cpu")
    ids, pixels, _ = _prompt(tokenizer, model, processor, [tiny_assets.example_image()])
    report = prefill_report(model, ids, pixels)
    assert report.dense_flops is None and report.line().endswith("(a dense model)")


def test_timing_against_the_dense_twin_fills_both_times(proxyv, tiny_assets):
    from llava.model.dense_twin import dense_twin

    tokenizer, model, processor, _ = proxyv
    ids, pixels, sizes = _prompt(tokenizer, model, processor, [tiny_assets.example_image()])
    report = prefill_report(model, ids, pixels)
    time_against_dense(report, model, dense_twin(model), ids, pixels, sizes)
    assert report.timed_s > 0 and report.dense_timed_s > 0
    assert "timed again on this input" in report.line()


def test_text_only_prompt_and_unknown_projector_are_said_plainly():
    report = PrefillReport(crops=0, vision_tokens=0, text_tokens=12, flops_problem="no analytic FLOPs for 'resampler'")
    assert report.line() == "no image · 12 text tokens · FLOPs not counted (no analytic FLOPs for 'resampler')"
