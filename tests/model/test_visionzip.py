"""VisionZip: kept tokens and contextual merge against plain references, the tower's CLS attention
against CLIP's own eager attention maps, config errors, and the tiny model training and answering
with VisionZip (on the baseline and under non-spatial ProxyV)."""

import pytest
import torch
import torch.nn.functional as F

from llava.model import LlavaLlamaForCausalLM, LlavaProxyVConfig, LlavaProxyVLlamaForCausalLM
from llava.model.layout import TOKEN_VISION
from llava.model.reduction.visionzip import cls_attention_and_keys, visionzip_select
from tests.model_fixtures import adamw_steps, tiny_llava_config, tiny_llava_model
from tests.proxyv_fixtures import MIXED_CROPS, MIXED_SAMPLES, pad_batch, random_crops, tiny_proxyv_model

IMAGE_SIZE, PATCHES = 56, 16  # a 4x4 grid per crop
DOMINANT, CONTEXTUAL = 6, 3


def reference_visionzip(features, cls_attention, keys, dominant, contextual):
    """Plain loops over one crop at a time."""
    crops = []
    for feats, attention, crop_keys in zip(features, cls_attention, keys):
        ranked = sorted(range(len(attention)), key=lambda i: -float(attention[i]))
        kept = sorted(ranked[:dominant])
        rest = [i for i in range(len(attention)) if i not in kept]
        step = len(rest) // contextual
        targets = [rest[j * step] for j in range(contextual)]
        groups = {t: [] for t in targets}
        for i in rest:
            if i in groups:
                continue
            sims = [float(F.cosine_similarity(crop_keys[i], crop_keys[t], dim=0)) for t in targets]
            groups[targets[sims.index(max(sims))]].append(i)
        # VisionZip's release: the target plus the mean of the tokens assigned to it (none: the target alone).
        merged = [feats[t] + (torch.stack([feats[i] for i in groups[t]]).mean(0) if groups[t] else 0) for t in targets]
        crops.append(torch.stack([feats[i] for i in kept] + merged))
    return torch.stack(crops)


def test_select_matches_plain_reference():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, PATCHES, 8, generator=generator)
    keys = torch.randn(2, PATCHES, 5, generator=generator)
    # A constructed pattern: crop 0 favours the odd patches, crop 1 a descending ramp.
    cls_attention = torch.stack([torch.arange(PATCHES) % 2 + torch.arange(PATCHES) / 100.0,
                                 torch.linspace(1.0, 0.0, PATCHES)])
    out = visionzip_select(features, cls_attention, keys, DOMINANT, CONTEXTUAL)
    assert out.shape == (2, DOMINANT + CONTEXTUAL, 8)
    torch.testing.assert_close(out, reference_visionzip(features, cls_attention, keys, DOMINANT, CONTEXTUAL))
    # The dominant part of crop 1 (descending ramp) is patches 0..5 in raster order.
    torch.testing.assert_close(out[1, :DOMINANT], features[1, :DOMINANT])


def test_tower_uses_the_selected_layers_cls_attention():
    """The recomputed CLS attention ranks like CLIP's own eager attention map of that layer."""
    model = tiny_llava_model(image_size=IMAGE_SIZE, attn_implementation="eager", vision_token_reduction="visionzip",
                             visionzip_dominant=DOMINANT, visionzip_contextual=0)
    tower = model.get_vision_tower()
    assert tower.vision_tower.config._attn_implementation == "eager"  # the LLaVA model's backend reaches CLIP
    pixels = random_crops([2])[0]
    layer = tower.vision_tower.encoder.layers[tower.select_layer]  # layer -2 outputs hidden_states[-2]
    captured = []
    hook = layer.self_attn.k_proj.register_forward_hook(lambda module, args, output: captured.append(output))
    with torch.no_grad():
        out = tower.vision_tower(pixels, output_hidden_states=True, output_attentions=True)
        hook.remove()
        cls_attention_ours, keys_ours = cls_attention_and_keys(layer, out.hidden_states[tower.select_layer - 1])
        reduced = tower(pixels)  # [2, DOMINANT, d]
    cls_attention = out.attentions[tower.select_layer][:, :, 0, 1:].sum(dim=1)  # [2, G]
    torch.testing.assert_close(cls_attention_ours, cls_attention)
    heads = layer.self_attn.num_heads
    keys = captured[0][:, 1:].reshape(2, PATCHES, heads, -1).mean(dim=2)  # CLIP's own keys, mean over heads
    torch.testing.assert_close(keys_ours, keys)
    kept = cls_attention.topk(DOMINANT, dim=1).indices.sort(dim=1).values
    selected = out.hidden_states[tower.select_layer][:, 1:]
    torch.testing.assert_close(reduced, selected.gather(1, kept[..., None].expand(-1, -1, selected.shape[-1])))


def test_counts_and_combinations_are_checked():
    with pytest.raises(ValueError, match="exceeds the 16 patches"):
        tiny_llava_model(image_size=IMAGE_SIZE, vision_token_reduction="visionzip", visionzip_dominant=14,
                         visionzip_contextual=4)
    with pytest.raises(ValueError, match="Unknown vision_token_reduction"):
        tiny_llava_config(vision_token_reduction="zip")
    with pytest.raises(ValueError, match="learn_proxy=True"):
        LlavaProxyVConfig(num_hidden_layers=4, vision_token_reduction="visionzip")


def _train_then_answer(model, steps: int = 3):
    """A few AdamW steps on the mixed batch, then greedy answers with and without the KV cache."""
    input_ids, attention_mask = pad_batch(MIXED_SAMPLES, side="right")
    images = random_crops(MIXED_CROPS, image_size=IMAGE_SIZE)
    labels = input_ids.masked_fill(~attention_mask.bool() | (input_ids < 0), -100)
    losses = adamw_steps(model, steps, input_ids=input_ids, attention_mask=attention_mask, images=images,
                         labels=labels)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    prompt_ids, prompt_mask = pad_batch(MIXED_SAMPLES[:2], side="left")
    prompt_images = images[:3]  # the first two samples' images
    kwargs = {"attention_mask": prompt_mask, "images": prompt_images, "max_new_tokens": 5, "do_sample": False}
    with_cache = model.generate(prompt_ids, use_cache=True, **kwargs)
    without_cache = model.generate(prompt_ids, use_cache=False, **kwargs)
    assert torch.equal(with_cache, without_cache)


def test_baseline_with_visionzip_trains_and_answers():
    model = tiny_llava_model(image_size=IMAGE_SIZE, vision_token_reduction="visionzip",
                             visionzip_dominant=DOMINANT, visionzip_contextual=CONTEXTUAL)
    assert isinstance(model, LlavaLlamaForCausalLM)
    images = random_crops([2], image_size=IMAGE_SIZE)
    _, _, layout = model.prepare_inputs_labels_for_multimodal(torch.tensor([[1, -200, 5]]), None, None, images)
    assert int((layout.token_kind == TOKEN_VISION).sum()) == 2 * (DOMINANT + CONTEXTUAL)
    _train_then_answer(model)


def test_learned_proxyv_on_visionzip_trains_and_answers():
    model = tiny_proxyv_model(proxyv_start_layer=2, learn_proxy=True, vision_token_reduction="visionzip",
                              visionzip_dominant=DOMINANT, visionzip_contextual=CONTEXTUAL)
    assert isinstance(model, LlavaProxyVLlamaForCausalLM)
    _train_then_answer(model)
