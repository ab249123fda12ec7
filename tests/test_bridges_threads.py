"""The machine-derived defaults of --threads=0 and bridges.train --workers=-1."""

import os

import pytest
import torch

import bridges


@pytest.fixture
def machine(monkeypatch):
    def set_(cores_total, mine, load, local_world=None):
        monkeypatch.setattr(os, "cpu_count", lambda: cores_total)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(mine)))
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
        if local_world is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    return set_


@pytest.mark.parametrize("total, mine, load, world, threads, workers", [
    (2, 2, 0.0, None, 2, 1),      # idle 2-core laptop
    (2, 2, 15.0, None, 1, 0),     # the shared 2-core machine under load
    (8, 8, 0.2, None, 8, 4),      # idle 8 cores: workers capped at 4
    (8, 8, 5.0, None, 3, 2),      # 8 cores, 5 busy
    (64, 8, 32.0, None, 4, 3),    # SLURM: 8 of 64 cores granted, half the node busy
    (8, 8, 0.0, 4, 2, 1),         # torchrun with 4 processes on the node
    (4, 4, 2.5, None, 2, 1),      # 1.5 free cores round to 2
])
def test_free_cores_rule(machine, total, mine, load, world, threads, workers):
    machine(total, mine, load, world)
    assert bridges.default_threads() == threads
    assert bridges.default_workers() == workers


def test_set_threads_never_raises_torch_above_its_count(machine):
    machine(8, 8, 0.0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert bridges.set_threads(0) == 1 and torch.get_num_threads() == 1
        assert bridges.set_threads(3) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
