"""Sizes on disk of files, folders and safetensors state dicts."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from torchslim.bench.size import file_bytes, params, state_dict_bytes


def test_file_and_directory_bytes(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 24)
    assert file_bytes(tmp_path / "a.bin") == 1000  # metric: exact
    assert file_bytes(tmp_path) == 1024
    with pytest.raises(FileNotFoundError, match="does not exist"):
        file_bytes(tmp_path / "missing")


def test_state_dict_bytes_of_known_tensor():
    class One(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(10, 10))  # 400 bytes of float32

    n = state_dict_bytes(One())
    # safetensors = 8-byte header length + JSON header + raw data: exact given the header it writes
    header = {"w": {"dtype": "F32", "shape": [10, 10], "data_offsets": [0, 400]}}
    min_header = len(json.dumps(header, separators=(",", ":")))
    assert 8 + min_header + 400 <= n <= 8 + min_header + 400 + 8  # header padded to 8 bytes
    assert params(One()) == 100


def test_tied_weights_counted_once():
    lin = nn.Linear(100, 100, bias=False)
    tied = nn.Sequential(lin, nn.ReLU(), lin)
    assert params(tied) == 10_000
    assert state_dict_bytes(tied) < 40_000 + 200  # stored once, not twice
