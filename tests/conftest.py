"""Tiny models built from configs (nothing is downloaded)."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import tiny_bert, tiny_llama  # noqa: F401  (re-exported for older imports)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def bert():
    return tiny_bert()


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(0, 64, (4, 9), generator=g),
        "labels": torch.randint(0, 2, (4,), generator=g),
    }
