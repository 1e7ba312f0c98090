"""`llava.model.dense_twin`: a ProxyV / PyramidDrop / VisionZip model's weights run as the plain
baseline of its family, shared rather than copied, computing what the family's baseline class with
those weights copied in computes."""

import pytest
import torch

from llava.model.dense_twin import dense_config, dense_twin, is_dense
from tests.model.test_proxyv import GEN_SAMPLES
from tests.proxyv_fixtures import (
    NUM_LAYERS,
    baseline_twin,
    random_crops,
    tiny_proxyv_config,
    tiny_proxyv_model,
)


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])
def test_twin_shares_the_weights_and_gives_the_baseline_logits(family):
    model = tiny_proxyv_model(seed=5, family=family, learn_proxy=True)
    twin = dense_twin(model)
    assert is_dense(twin.config) and not is_dense(model.config)
    params = dict(model.named_parameters())
    assert all(param.data_ptr() == params[name].data_ptr() for name, param in twin.named_parameters())
    assert not any(tensor.is_meta for tensor in [*twin.parameters(), *twin.buffers()])
    sample, images = GEN_SAMPLES[0], random_crops([3], seed=5)
    ids = torch.tensor([sample])
    with torch.no_grad():
        expected = baseline_twin(model)(input_ids=ids, images=images, use_cache=False).logits
        got = twin(input_ids=ids, images=images, use_cache=False).logits
        proxyv = model(input_ids=ids, images=images, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(proxyv, expected, atol=1e-3)  # the twin is not the ProxyV computation


def test_proxyv_from_the_last_layer_is_already_dense():
    assert is_dense(tiny_proxyv_config(proxyv_start_layer=NUM_LAYERS))
    assert not is_dense(tiny_proxyv_config(proxyv_start_layer=NUM_LAYERS - 1))
    assert not is_dense(tiny_proxyv_config(proxyv_start_layer=0))  # every layer ProxyV


def test_dense_config_drops_token_reduction_and_keeps_the_newline_scheme():
    config = tiny_proxyv_config(image_newline_positions="release", vision_token_reduction="visionzip", learn_proxy=True,
                                visionzip_dominant=6, visionzip_contextual=2)
    dense = dense_config(config)
    assert not is_dense(config) and is_dense(dense)
    assert dense.vision_token_reduction is None and dense.image_newline_positions == "release"
    assert dense.hidden_size == config.hidden_size and dense.model_type != config.model_type
