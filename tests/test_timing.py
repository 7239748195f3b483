"""CUDA timing logic, driven on the CPU through a fake torch.cuda: warm-up counts are
exactly what was asked (no hidden extra runs), and ``ahead`` timing retakes a sample
whose start event the GPU reached before the host finished enqueueing."""

import contextlib

import pytest
import torch

from kvbench import timing


class FakeEvent:
    """An event whose query() answers from a script: True = the GPU already got there."""

    script: list[bool] = []
    t = 0.0

    def __init__(self, enable_timing=False):
        self.at = None

    def record(self, stream=None):
        FakeEvent.t += 1.0
        self.at = FakeEvent.t

    def query(self):
        return FakeEvent.script.pop(0) if FakeEvent.script else False

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return (other.at - self.at) * 1e3  # ms


@pytest.fixture
def fake_cuda(monkeypatch):
    sleeps: list[int] = []
    FakeEvent.script = []
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: object())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "_sleep", lambda c: sleeps.append(c))
    monkeypatch.setattr(timing, "_sleep_rate", [1e9])
    return sleeps


def test_warmup_runs_exactly_as_asked(fake_cuda):
    calls = []
    out = timing.time_cuda(lambda: calls.append(1), warmup=0, samples=3)
    assert len(calls) == 3 and len(out) == 3 and not fake_cuda
    calls.clear()
    timing.time_cuda(lambda: calls.append(1), warmup=2, samples=1, inner=2)
    assert len(calls) == 2 + 2


def test_ahead_retakes_a_sample_the_gpu_caught_up_with(fake_cuda):
    calls = []
    FakeEvent.script = [True, False, False]  # sample 1: caught up once, then hidden
    info = {}
    out = timing.time_cuda(lambda: calls.append(1), warmup=1, samples=2, ahead=True, info=info)
    assert len(out) == 2
    assert len(calls) == 1 + 3  # warm-up, sample 1 twice, sample 2 once
    assert len(fake_cuda) == 3 and fake_cuda[1] == pytest.approx(4 * fake_cuda[0], rel=1e-3)  # grew
    assert info["hidden_samples"] == 2 and info["samples"] == 2
    assert "2 of 2 samples" in timing.ahead_note(info)


def test_ahead_gives_up_and_says_so(fake_cuda):
    FakeEvent.script = [True] * 8  # fn that always blocks on the GPU: never hidden
    info = {}
    timing.time_cuda(lambda: None, warmup=1, samples=2, ahead=True, info=info)
    assert info["hidden_samples"] == 0
    assert "0 of 2 samples" in timing.ahead_note(info)


def test_pair_counts_warmup_exactly(fake_cuda):
    a, b = [], []
    ta, tb, span = timing.time_cuda_pair(lambda: a.append(1), FakeStream(), lambda: b.append(1),
                                         FakeStream(), warmup=0, samples=2)
    assert len(a) == len(b) == 2 and len(ta) == len(tb) == len(span) == 2


class FakeStream:
    def wait_event(self, e):
        pass


def test_ahead_keeps_a_sample_whose_host_was_held_back(fake_cuda):
    """A host enqueue that outlasts its sleep is retaken once behind a sleep twice as
    long; one that outlasts that too (a full launch queue holds the host until the GPU
    drains it: the enqueue grows with the sleep) cannot be hidden: kept, counted as not
    hidden, host_bound, and the later samples are not retaken."""
    import time as _t

    calls = []

    def held_back():  # the host waits as long as the GPU sleeps, and a little more
        calls.append(1)
        _t.sleep(fake_cuda[-1] / 1e9 + 0.002)
    FakeEvent.script = [True] * 8
    info = {}
    timing.time_cuda(held_back, warmup=0, samples=2, ahead=True, info=info)
    assert len(calls) == 2 + 1 and info["hidden_samples"] == 0 and info["host_bound"]


def test_ahead_retries_a_sleep_that_was_merely_too_short(fake_cuda):
    import time as _t

    calls = []

    def slow():  # 20 ms of enqueue, whatever the sleep: a longer sleep hides it
        calls.append(1)
        _t.sleep(0.02)
    FakeEvent.script = [True, False, False]
    info, state = {}, {}
    timing.time_cuda(slow, warmup=0, samples=1, ahead=True, info=info, state=state)
    assert len(calls) == 2 and info["hidden_samples"] == 1 and not info["host_bound"]
    assert state["sleep_s"] >= 0.04  # kept for the caller's next call
    timing.time_cuda(slow, warmup=0, samples=1, ahead=True, info=info, state=state)
    assert len(calls) == 3 and fake_cuda[-1] == pytest.approx(state["sleep_s"] * 1e9, rel=0.5)
