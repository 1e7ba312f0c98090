"""Token-reduction flags given without the flag that turns the reduction on are refused, not dropped."""

import pytest

from llava.train.arguments import ModelArguments


@pytest.mark.parametrize(("flags", "needle"), [
    ({"visionzip_dominant": 100}, "need --vision_token_reduction visionzip"),
    ({"visionzip_contextual": 10}, "need --vision_token_reduction visionzip"),
    ({"pyramid_drop_ratio": 0.3}, "--pyramid_drop_ratio needs --pyramid_drop_layers"),
])
def test_orphan_reduction_flags_are_refused(flags, needle):
    with pytest.raises(ValueError, match=needle):
        ModelArguments(model_name_or_path="m", **flags).token_reduction_options()


def test_reduction_flags_reach_the_config_options():
    args = ModelArguments(model_name_or_path="m", vision_token_reduction="visionzip", visionzip_dominant=100,
                          pyramid_drop_layers="1,2", pyramid_drop_ratio=0.3)
    assert args.token_reduction_options() == {
        "vision_token_reduction": "visionzip", "visionzip_dominant": 100, "visionzip_contextual": 40,
        "pyramid_drop_layers": [1, 2], "pyramid_drop_ratio": 0.3}
    assert ModelArguments(model_name_or_path="m").token_reduction_options() == {}
