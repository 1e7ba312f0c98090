"""Where the tests find files outside the package: the shared golden outputs beside the repository."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# CI clones the repository with `shared/` beside it (../shared), as on the development machines.
GOLDEN = REPO.parent / "shared" / "golden" / "proxyv_release"
