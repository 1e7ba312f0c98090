"""README's Python snippets run as written on the tiny checkpoints (offline).

Each ```python block of README.md is compiled and executed. What a snippet leaves to the reader
(`path` of a checkpoint, a photo, a GPU, the layer numbers of a 32-layer model) is replaced by the
tiny default's values through the table below, and the replacement must be found: a snippet that
changes so that the table no longer applies fails here instead of going stale.
"""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
# (text in the snippet, what the tiny run uses instead); every entry must match the snippet it is for.
STAND_INS = {
    "masking": [],
    "reduction": [("[12, 20, 26]", "[1, 2, 3]")],  # the tiny LLM has 4 layers
    "answer": [('"path/or/hub-name-of-checkpoint"', "path"), ('device="cuda"', 'device="cpu"'),
               ('"photo.jpg"', "photo")],
}


def _kind(snippet: str) -> str:
    if "mask_vision_attention" in snippet:
        return "masking"
    if "pyramid_drop_layers" in snippet:
        return "reduction"
    if "answer(" in snippet:
        return "answer"
    raise AssertionError(f"a README snippet this test does not know; add it to STAND_INS:\n{snippet}")


def test_readme_has_the_snippets_this_test_knows():
    assert sorted(_kind(snippet) for snippet in SNIPPETS) == sorted(STAND_INS)


@pytest.mark.parametrize("snippet", SNIPPETS, ids=_kind)
def test_readme_snippet_runs(snippet, tiny_assets, capsys):
    kind = _kind(snippet)
    for text, stand_in in STAND_INS[kind]:
        assert text in snippet, f"README's {kind} snippet no longer contains {text!r}"
        snippet = snippet.replace(text, stand_in)
    namespace = {"path": str(tiny_assets.llava), "photo": str(tiny_assets.example_image())}
    exec(compile(snippet, f"README.md ({kind} snippet)", "exec"), namespace)
    model = namespace["model"]
    if kind == "masking":
        assert model.config.proxyv_variant == "mask_vision_attention"
    elif kind == "reduction":
        assert type(model).__name__ == "LlavaPyramidDropLlamaForCausalLM"
    else:
        assert capsys.readouterr().out.strip()  # it printed an answer
