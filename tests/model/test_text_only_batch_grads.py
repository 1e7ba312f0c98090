"""A training batch without images still runs the vision tower and projector (ZeRO-3 ranks must
touch the same parameters every step, or they hang): every multimodal parameter that an image
batch gives a gradient gets one here too, zero, and the loss is exactly the loss without that path."""

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from tests.model_fixtures import random_images, tiny_llava_model
from tests.proxyv_fixtures import random_crops, tiny_proxyv_model


def _batch(input_ids):
    return {"input_ids": input_ids, "labels": input_ids.clone(), "attention_mask": torch.ones_like(input_ids)}


def _multimodal_grads(model):
    return {name: param.grad for name, param in model.named_parameters()
            if param.requires_grad and name.startswith(("model.mm_projector.", "model.vision_tower.",
                                                         "model.image_newline"))}


def test_text_only_training_batch_gives_zero_not_none_gradients():
    model = tiny_llava_model(image_size=56)
    model.get_vision_tower().requires_grad_(True)  # as with mm_vision_tower in the tunable parts
    text = torch.tensor([[1, 5, 6, 7, 8, 9], [1, 10, 11, 12, 13, 2]])  # [B, T], no image placeholder
    model.eval()
    reference = model(**_batch(text)).loss  # eval: the plain text path, no vision work
    reference.backward()
    assert all(grad is None for grad in _multimodal_grads(model).values())
    model.zero_grad(set_to_none=True)

    model.train()
    with_image = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 7, 8, 9]])
    model(**_batch(with_image), images=random_images([1], image_size=56)).loss.backward()
    used_by_images = {name for name, grad in _multimodal_grads(model).items() if grad is not None}
    assert any(name.startswith("model.mm_projector.") for name in used_by_images)
    assert any(name.startswith("model.vision_tower.") for name in used_by_images)
    assert "model.image_newline" in used_by_images
    model.zero_grad(set_to_none=True)

    loss = model(**_batch(text)).loss
    assert torch.equal(loss, reference)  # the tiny model has no dropout; 0 * features adds nothing
    loss.backward()
    grads = _multimodal_grads(model)
    assert {name for name, grad in grads.items() if grad is not None} == used_by_images
    assert all(not grads[name].any() for name in used_by_images)


@pytest.mark.parametrize("options", [{}, {"learn_proxy": True}, {"proxyv_variant": "vision_mlp"}])
def test_text_only_proxyv_batch_touches_the_guided_update_modules(options):
    """The same for ProxyV's own modules (VisionMLPs, learned-proxy initializer), which only run on images."""
    model = tiny_proxyv_model(proxyv_start_layer=2, **options)
    text = torch.tensor([[1, 5, 6, 7, 8, 9], [1, 10, 11, 12, 13, 2]])  # [B, T]
    model.eval()
    reference = model(**_batch(text)).loss
    model.train()
    loss = model(**_batch(text)).loss
    assert torch.equal(loss, reference)
    loss.backward()
    proxyv_grads = {name: param.grad for name, param in model.named_parameters()
                    if name.startswith(("model.vision_mlp_layers.", "model.proxyv_initializer."))}
    assert proxyv_grads and all(grad is not None and not grad.any() for grad in proxyv_grads.values())
    assert any(name.startswith("model.proxyv_initializer.") for name in proxyv_grads) == bool(options.get("learn_proxy"))


def _module_order(model, **batch) -> list[str]:
    """Names of the modules owning parameters, in the order a training forward + backward first calls them."""
    order, handles = [], []
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_pre_hook(
                lambda _module, _args, name=name: order.append(name) if name not in order else None))
    model.train()
    model(**batch).loss.backward()
    for handle in handles:
        handle.remove()
    model.zero_grad(set_to_none=True)
    return order


@pytest.mark.parametrize("options", [None, {}, {"learn_proxy": True}])
def test_text_only_batch_calls_modules_in_the_image_batch_order(options):
    """ZeRO-3 gathers a module's parameters as the module is called, a collective every rank must issue
    in the same order: a rank with a text-only batch must call the modules as a rank with images does."""
    if options is None:
        model, images = tiny_llava_model(image_size=56), random_images([1], image_size=56)
    else:
        model, images = tiny_proxyv_model(proxyv_start_layer=2, **options), random_crops([1])
    with_image = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 7, 8, 9]])
    text = torch.tensor([[1, 5, 6, 7, 8, 9]])
    image_order = _module_order(model, **_batch(with_image), images=images)
    assert _module_order(model, **_batch(text)) == image_order
