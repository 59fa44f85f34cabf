"""Shared fixtures: tiny random-weight pipelines built offline once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the model hub; a hub id that isn't cached must fail fast, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tiny models are built (once) for this session."""
    env = os.environ.get("EASEL_CACHE_DIR")
    return Path(env) if env else tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def sd_engine(model_cache: Path):
    from pipeline.engine import Engine

    return Engine.load("tiny:sd", device="cpu", cache_dir=model_cache)


@pytest.fixture(scope="session")
def ldm_engine(model_cache: Path):
    from pipeline.engine import Engine

    return Engine.load("tiny:ldm", device="cpu", cache_dir=model_cache)
