"""config.json read without transformers' config classes (start-up) gives what transformers gives."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoConfig

from parathinker.assets import DEFAULT_MODEL
from parathinker.model.config import LazyHFConfig, ModelConfig
from parathinker.model.model import rotary_frequencies


@pytest.mark.parametrize("which", ["tiny_qwen2", "tiny_llama", "bundled"])
def test_fast_config_equals_transformers(which, request) -> None:
    path = DEFAULT_MODEL if which == "bundled" else request.getfixturevalue(which)
    fast = ModelConfig.from_dir(path)
    slow = ModelConfig.from_hf(AutoConfig.from_pretrained(str(path)), max_segments=fast.max_segments)
    if which != "tiny_llama":  # llama3 RoPE scaling: read by transformers, lazily
        assert isinstance(fast.hf, LazyHFConfig) and fast.hf._cfg is None
    names = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "hf"]
    assert {n: getattr(fast, n) for n in names} == {n: getattr(slow, n) for n in names}
    (a, sa), (b, sb) = rotary_frequencies(fast), rotary_frequencies(slow)
    assert sa == sb and torch.equal(a, b)
    assert fast.to_hf_dict() == slow.to_hf_dict()
