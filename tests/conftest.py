"""Shared test fixtures: tiny configs, an in-memory CLIP tokenizer, the authors' parity fixture."""

import os
from pathlib import Path

import pytest
import torch

from modeling_clip_vip.configuration_clip_vip import ClipVipConfig
from training.tokenization import build_word_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("CLIP_VIP_SHARED", REPO_ROOT.parent / "shared"))
OFFICIAL_TINY_DIR = SHARED_DIR / "fixtures" / "clipvip_official_tiny"
TINY_CONFIG_DIR = REPO_ROOT / "hub_configs" / "clip-vip-tiny"

TEST_WORDS = "a the red green blue yellow circle square moves left right up down appears disappears".split()

torch.set_num_threads(min(2, torch.get_num_threads()))


def offline_env() -> dict[str, str]:
    """Environment for a fresh Python process that must not reach the Hub."""
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


@pytest.fixture
def tiny_config() -> ClipVipConfig:
    return ClipVipConfig.from_pretrained(TINY_CONFIG_DIR)


@pytest.fixture(scope="session")
def tokenizer():
    return build_word_tokenizer(TEST_WORDS, model_max_length=32)
