"""al_core.device: torch work on a thread that ends with it (its OpenMP team goes with it)."""

import threading

import pytest
import torch

from al_core.device import in_passing_thread


def test_the_work_runs_on_another_thread_that_has_ended_and_its_result_comes_back():
    ran_on = []

    def work():
        ran_on.append(threading.current_thread())
        return torch.ones(64, 64).sum().item()

    assert in_passing_thread(work) == 64 * 64
    assert ran_on[0] is not threading.current_thread() and not ran_on[0].is_alive()


def test_what_the_work_raises_is_raised_to_the_caller():
    def work():
        raise KeyError("no such checkpoint")

    with pytest.raises(KeyError, match="no such checkpoint"):
        in_passing_thread(work)
