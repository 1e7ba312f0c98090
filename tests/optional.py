"""Imports of optional extras for the tests that need them.

Without the extra installed, a test module is skipped (`pytest.importorskip`). CI installs every
extra and sets `LLAVA_TEST_REQUIRE_EXTRAS=1`, so there a failing import fails the run instead of
quietly skipping the tests.
"""

import importlib
import os

import pytest

REQUIRE_ENV = "LLAVA_TEST_REQUIRE_EXTRAS"


def import_extra(module: str):
    """`module` imported; skipped when it is missing, unless CI requires every extra."""
    if os.environ.get(REQUIRE_ENV, "") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)
