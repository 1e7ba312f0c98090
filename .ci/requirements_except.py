"""Print the requirements of an installed distribution, one per line, leaving out the named ones.

CI installs Gradio (the web demo's extra) with `--no-deps` and then its requirements through this,
without `pillow`: Gradio pins pillow<13, and Pillow 12 resamples images slightly differently from
the Pillow 13 the golden outputs were made with (logits differ by up to ~1e-3).

    python .ci/requirements_except.py gradio pillow
"""

import sys
from importlib.metadata import requires

from packaging.requirements import Requirement

distribution, *excluded = sys.argv[1:]
for line in requires(distribution) or []:
    requirement = Requirement(line)
    if requirement.name.lower() in excluded or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
        continue
    requirement.marker = None
    print(requirement)
