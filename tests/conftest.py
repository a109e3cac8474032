"""Test-wide settings.

Tests run their small models on one thread: with two threads on a 2-core machine that is also busy with
something else, OpenMP's spinning threads made a tiny training loop 15x slower (measured: 0.42 s vs
6.3 s per epoch). One thread is also what makes timings in tests repeatable.
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_run_store(tmp_path_factory, monkeypatch):
    """Never write into the user's ~/.torchslim from a test."""
    home = tmp_path_factory.mktemp("torchslim-home")
    monkeypatch.setenv("TORCHSLIM_RUNS_DB", str(home / "runs.db"))
    monkeypatch.setenv("TORCHSLIM_HOME", str(home))
