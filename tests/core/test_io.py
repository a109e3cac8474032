"""Atomic writes: a failed write leaves the old file intact and no temporary file behind."""

from __future__ import annotations

import os
import stat

import pytest

from torchslim.core.io import atomic_write, atomic_write_json, atomic_write_text


def test_success_replaces_the_file(tmp_path):
    p = tmp_path / "sub" / "f.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_json(p, {"a": 2})
    assert p.read_text().strip().endswith("}") and '"a": 2' in p.read_text()
    # usual permissions (mkstemp alone would leave 0600)
    mode = stat.S_IMODE(os.stat(p).st_mode)
    assert mode == 0o666 & ~_umask()


def test_interrupted_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")
    with pytest.raises(KeyboardInterrupt), atomic_write(p, "w") as f:
        f.write("half of the new")
        raise KeyboardInterrupt
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
