"""PyramidDrop: kept tokens on a constructed attention pattern, the staged forward against a hand loop
over the layers, batches against single samples, generation with cache == without (single and
ragged batches), training steps, and selection from a checkpoint's config."""

import pytest
import torch
from transformers import AutoConfig

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model import FAMILIES
from llava.model.builder import load_pretrained_model
from llava.model.layout import TOKEN_VISION
from llava.model.masks import additive_mask, position_causal_visibility
from llava.model.model_registry import causal_lm_class_for_config
from llava.model.reduction.pyramid_drop import StageState, find_instruction_index, keep_mask
from llava.train.arguments import ModelArguments
from tests.model_fixtures import adamw_steps, save_tiny_checkpoint, tiny_llava_config, tiny_llava_model
from tests.proxyv_fixtures import FAMILY_NAMES, MIXED_CROPS, MIXED_SAMPLES, pad_batch, random_crops

IMAGE_SIZE = 56  # 16 tokens per crop
DROP_LAYERS, RATIO = [1, 3], 0.5
IMG = IMAGE_TOKEN_INDEX


def pdrop_model(attn_implementation="eager", seed=0, family="llama"):
    return tiny_llava_model(seed=seed, image_size=IMAGE_SIZE, attn_implementation=attn_implementation, family=family,
                            model_class=FAMILIES[family].pyramid_drop_causal_lm, num_hidden_layers=4,
                            pyramid_drop_layers=DROP_LAYERS, pyramid_drop_ratio=RATIO)


def test_kept_tokens_on_a_constructed_attention_pattern():
    # Sample 0: text, 6 vision, text; sample 1: 4 vision then text, one padding slot.
    is_vision = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    valid = torch.tensor([[1] * 9, [1] * 8 + [0]], dtype=torch.bool)
    state = StageState(index=torch.arange(9).expand(2, -1), valid=valid, is_vision=is_vision,
                       position_ids=torch.arange(9).expand(2, -1))
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.05, 0.4, 0.2, 0.9, 0.9],
                           [0.2, 0.6, 0.1, 0.7, 0.0, 0.0, 0.0, 0.0, 0.0]])
    keep = keep_mask(scores, state, torch.tensor([3, 2]))
    expected = torch.zeros(2, 9, dtype=torch.bool)
    expected[0, [0, 2, 5, 3, 7, 8]] = True  # non-vision + the 3 best vision (0.5, 0.4, 0.3)
    expected[1, [1, 3, 4, 5, 6, 7]] = True  # the 2 best vision (0.7, 0.6) + real text
    assert torch.equal(keep, expected)


def test_instruction_index_from_mask_and_labels():
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert find_instruction_index(mask, None, -100).tolist() == [4, 2]
    labels = torch.tensor([[-100, -100, -100, 7, 8], [-100, 5, 6, -100, -100]])
    assert find_instruction_index(mask, labels, -100).tolist() == [2, 0]


def _causal(positions):
    return additive_mask(position_causal_visibility(positions[None], torch.ones_like(positions)[None]), torch.float32)


def reference_forward(model, input_ids, images, instruction: int = -1):
    """Hand loop over the layers for one sample: at each drop layer rank the vision tokens by the
    eager attention weights of the instruction token (mean over heads; by default the last token,
    else the expanded-sequence index `instruction`) and keep the best `RATIO`."""
    embeds, _, layout = model.prepare_inputs_labels_for_multimodal(input_ids, None, None, images)
    inner, hidden = model.model, embeds[0]
    tokens = list(range(hidden.shape[0]))
    is_vision = (layout.token_kind[0] == TOKEN_VISION).tolist()
    positions_all = layout.position_ids[0]
    final = torch.zeros_like(hidden)
    for index, layer in enumerate(inner.layers):
        positions = positions_all[tokens]
        rotary = inner.rotary_emb(hidden[None], positions[None])
        if index in DROP_LAYERS:
            _, weights = layer.self_attn(layer.input_layernorm(hidden[None]), rotary, _causal(positions))
            query_slot = -1 if instruction < 0 else tokens.index(instruction)
            scores = weights[0, :, query_slot].mean(0)  # the instruction token's attention
            vision = [slot for slot, token in enumerate(tokens) if is_vision[token]]
            best = sorted(vision, key=lambda slot: -float(scores[slot]))[: int(len(vision) * RATIO)]
            keep = sorted([slot for slot, token in enumerate(tokens) if not is_vision[token]] + best)
            final[tokens] = hidden
            tokens, hidden = [tokens[slot] for slot in keep], hidden[keep]
            positions = positions_all[tokens]
            rotary = inner.rotary_emb(hidden[None], positions[None])
        hidden = layer(hidden[None], attention_mask=_causal(positions), position_embeddings=rotary)[0]
    final[tokens] = hidden
    return model.lm_head(inner.norm(final))  # [T, V]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_forward_matches_a_hand_loop_over_layers(family):
    model = pdrop_model(family=family)
    input_ids = torch.tensor([[1, 5, IMG, 6, 7, 8]])
    images = random_crops([3], image_size=IMAGE_SIZE)
    with torch.no_grad():
        logits = model(input_ids=input_ids, images=images).logits[0]
        expected = reference_forward(model, input_ids, images)
        baseline = tiny_llava_model(image_size=IMAGE_SIZE, attn_implementation="eager", num_hidden_layers=4,
                                    family=family)
        baseline_logits = baseline(input_ids=input_ids, images=images).logits[0]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits[-1], baseline_logits[-1], atol=1e-3)  # tokens were dropped


def test_training_forward_ranks_by_the_token_before_the_answer():
    """With labels, the ranking query is the last prompt token (before the first supervised one), not
    the sequence's last token: the logits equal the hand loop queried there."""
    model = pdrop_model()
    input_ids = torch.tensor([[1, 5, IMG, 6, 7, 8, 9]])
    labels = input_ids.masked_fill(torch.arange(7) < 5, -100)  # the answer is 8, 9
    images = random_crops([3], image_size=IMAGE_SIZE)
    with torch.no_grad():
        logits = model(input_ids=input_ids, images=images, labels=labels).logits[0]
        expanded = logits.shape[0]
        expected = reference_forward(model, input_ids, images, instruction=expanded - 3)  # token 7
        last_token = reference_forward(model, input_ids, images)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, last_token, atol=1e-4)  # the query matters here


def test_batch_equals_single_samples_and_backends_agree():
    model, sdpa = pdrop_model("eager"), pdrop_model("sdpa")
    input_ids, attention_mask = pad_batch(MIXED_SAMPLES, side="right")
    images = random_crops(MIXED_CROPS, image_size=IMAGE_SIZE)
    with torch.no_grad():
        batch_logits = model(input_ids=input_ids, attention_mask=attention_mask, images=images).logits
        torch.testing.assert_close(sdpa(input_ids=input_ids, attention_mask=attention_mask, images=images).logits,
                                   batch_logits, atol=1e-5, rtol=1e-5)
        image_iter = iter(images)
        for row, sample in enumerate(MIXED_SAMPLES):
            own = [next(image_iter) for token in sample if token == IMG]
            single = model(input_ids=torch.tensor([sample]), images=own or None).logits[0]
            torch.testing.assert_close(batch_logits[row, : single.shape[0]], single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("rows", [[0], [0, 1, 3]], ids=["single", "ragged-batch"])
def test_generation_with_cache_equals_without(rows, family):
    model = pdrop_model("sdpa", family=family)
    samples = [MIXED_SAMPLES[r] for r in rows]
    per_sample = iter(random_crops(MIXED_CROPS, image_size=IMAGE_SIZE))
    grouped = [[next(per_sample) for token in s if token == IMG] for s in MIXED_SAMPLES]
    images = [crop for r in rows for crop in grouped[r]]
    input_ids, attention_mask = pad_batch(samples, side="left")
    kwargs = {"attention_mask": attention_mask, "images": images, "max_new_tokens": 6, "do_sample": False}
    with_cache = model.generate(input_ids, use_cache=True, **kwargs)
    without_cache = model.generate(input_ids, use_cache=False, **kwargs)
    assert torch.equal(with_cache, without_cache)


def test_trains_and_answers():
    model = pdrop_model("sdpa")
    input_ids, attention_mask = pad_batch(MIXED_SAMPLES, side="right")
    images = random_crops(MIXED_CROPS, image_size=IMAGE_SIZE)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :5] = -100  # the instruction; the rest is the answer
    losses = adamw_steps(model, 3, input_ids=input_ids, attention_mask=attention_mask, images=images, labels=labels)
    assert losses[-1] < losses[0]
    prompt_ids, prompt_mask = pad_batch(MIXED_SAMPLES[:1], side="left")
    kwargs = {"attention_mask": prompt_mask, "images": images[:1], "max_new_tokens": 4, "do_sample": False}
    assert torch.equal(model.generate(prompt_ids, use_cache=True, **kwargs),
                       model.generate(prompt_ids, use_cache=False, **kwargs))


def test_options_are_checked():
    with pytest.raises(ValueError, match="pyramid_drop_layers must be"):
        tiny_llava_config(num_hidden_layers=4, pyramid_drop_layers=[3, 1])
    with pytest.raises(ValueError, match="pyramid_drop_layers must be"):
        tiny_llava_config(num_hidden_layers=4, pyramid_drop_layers=[4])
    with pytest.raises(ValueError, match="pyramid_drop_ratio"):
        tiny_llava_config(num_hidden_layers=4, pyramid_drop_layers=[1], pyramid_drop_ratio=0.0)
    with pytest.raises(ValueError, match="does not run"):
        tiny_llava_model(image_size=IMAGE_SIZE, num_hidden_layers=4, pyramid_drop_layers=[1])  # the baseline class
    with pytest.raises(ValueError, match="comma-separated integers"):
        ModelArguments(model_name_or_path="llm", pyramid_drop_layers="12,a").token_reduction_options()
    flags = ModelArguments(model_name_or_path="llm", pyramid_drop_layers="12,20,26", pyramid_drop_ratio=0.25)
    assert flags.token_reduction_options() == {"pyramid_drop_layers": [12, 20, 26], "pyramid_drop_ratio": 0.25}


def test_selected_from_the_checkpoint_config(tmp_path):
    """A baseline checkpoint runs PyramidDrop or VisionZip training-free through `customized_config`."""
    baseline = tiny_llava_model(image_size=IMAGE_SIZE, num_hidden_layers=4)
    path = save_tiny_checkpoint(baseline, tmp_path / "ckpt")
    for overrides in ({"pyramid_drop_layers": DROP_LAYERS}, {"vision_token_reduction": "visionzip",
                                                             "visionzip_dominant": 6, "visionzip_contextual": 2}):
        config = AutoConfig.from_pretrained(path)
        values = {key: value for key, value in config.to_dict().items() if key != "model_type"}
        customized = type(config)(**{**values, **overrides})
        _, model, _, _ = load_pretrained_model(str(path), None, "tiny", device="cpu", customized_config=customized)
        assert type(model) is causal_lm_class_for_config(customized)
        images = random_crops([2], image_size=IMAGE_SIZE)
        ids = torch.tensor([[1, 5, IMG, 6, 7]])
        kwargs = {"images": images, "max_new_tokens": 3, "do_sample": False}
        assert torch.equal(model.generate(ids, use_cache=True, **kwargs), model.generate(ids, use_cache=False, **kwargs))
    assert causal_lm_class_for_config(customized) is not FAMILIES["llama"].pyramid_drop_causal_lm
