"""Fixtures shared by every test module (engineers add theirs here)."""

from __future__ import annotations

from pathlib import Path

import pytest

# Real models and images live next to the repository, never inside it (see MODELS.md there).
SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (models/, images/, docs/); the test is skipped when it is absent."""
    if not (SHARED_DIR / "models").is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DIR}")
    return SHARED_DIR


_PREPARED: dict[str, object] = {}


@pytest.fixture(scope="session")
def prepared():
    """prepared(spec) -> compiler.PreparedModel, loaded and quantised once per test session."""
    from mbgen.compiler import CompileOptions, prepare

    def get(spec: str):
        if spec not in _PREPARED:
            _PREPARED[spec] = prepare(spec, CompileOptions())
        return _PREPARED[spec]
    return get


def image_paths() -> list[Path]:
    """The shared photos, or none when ../shared is absent."""
    folder = SHARED_DIR / "images"
    return sorted(folder.glob("*.*")) if folder.is_dir() else []
