"""Timing with the right clock: CUDA events on the work's stream for GPU work,
perf_counter for host work. Always after warm-up; always the raw samples."""

from __future__ import annotations

import time
from typing import Any, Callable


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return torch.cuda.is_available()


def time_host(fn: Callable[[], Any], *, warmup: int, samples: int, inner: int = 1,
              setup: Callable[[], Any] | None = None) -> list[float]:
    """Seconds per sample of ``inner`` calls of fn, on the host clock.

    ``setup`` runs before each sample, outside the timed region (e.g. dropping the
    page cache before a cold read)."""
    for _ in range(warmup):
        if setup:
            setup()
        fn()
    out = []
    for _ in range(samples):
        if setup:
            setup()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        out.append(time.perf_counter() - t0)
    return out


#: longest GPU sleep ``ahead`` timing will enqueue before a sample (seconds)
MAX_AHEAD_S = 2.0
_sleep_rate: list[float] = []


def sleep_cycles_per_s() -> float:
    """GPU clock cycles per second of ``torch.cuda._sleep``, measured once with events
    (the SM clock under load; no table of clocks needed)."""
    import torch

    if not _sleep_rate:
        cycles = 20_000_000
        torch.cuda._sleep(cycles // 10)  # wake the clocks
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        torch.cuda._sleep(cycles)
        b.record()
        b.synchronize()
        _sleep_rate.append(cycles / max(a.elapsed_time(b) / 1e3, 1e-6))
    return _sleep_rate[0]


def ahead_note(info: dict[str, Any]) -> str:
    """What ``ahead`` timing ensured, for a case's notes."""
    text = (f"host enqueue {info['enqueue_s'] * 1e3:.2f} ms (median) ran behind a GPU sleep of "
            f"{info['sleep_s'] * 1e3:.1f} ms; in {info['hidden_samples']} of {info['samples']} "
            "samples the GPU had not reached the start event when the enqueue returned, so "
            "those timed regions hold device work only (no host gaps)")
    if info.get("host_bound"):
        text += ("; the host was held back by the GPU (more operations than CUDA queues per "
                 "stream, ~1000): the other samples are bound by the host's enqueue rate")
    return text


def time_cuda(fn: Callable[[], Any], *, warmup: int, samples: int, inner: int = 1,
              stream: Any = None, setup: Callable[[], Any] | None = None,
              ahead: bool = False, info: dict[str, Any] | None = None,
              state: dict[str, Any] | None = None) -> list[float]:
    """Seconds per sample of ``inner`` calls of fn, measured with CUDA events recorded on
    ``stream`` (default: the current stream). fn must enqueue its work on that stream
    (or on streams that wait for it and that it waits for). ``warmup`` untimed calls run
    first (the CLI makes it >= 1 on CUDA, so Triton's compilation is never timed).

    ahead: enqueue a GPU sleep longer than fn's host enqueue time before the start event,
    and check after the enqueue that the GPU had not reached the start event yet (the
    sleep is lengthened and the sample retaken when it had): then the timed region holds
    device work only, never GPU idle time spent waiting for the host (a Python binding
    checking thousands of arguments, per-layer launches). A sample whose enqueue outlasted
    its sleep is retaken once behind a sleep twice that enqueue; if the enqueue outlasts
    that too, the host was held back by the GPU (``host_bound``). ``info`` (a dict)
    receives enqueue_s, sleep_s, hidden_samples and samples; see ``ahead_note``.
    ``state`` (a dict kept by the caller across calls) carries the sleep length from one
    call to the next, so calls of a few samples each need no warm-up to size it."""
    import torch

    stream = stream or torch.cuda.current_stream()
    torch.cuda.synchronize()  # work enqueued on other streams (data setup) is done
    enqueue: list[float] = []
    for _ in range(warmup):
        if setup:
            setup()
        with torch.cuda.stream(stream):
            t0 = time.perf_counter()
            fn()
            enqueue.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    rate = sleep_cycles_per_s() if ahead else 0.0
    # sized from the quickest warm-up enqueue (the first may include Triton's compile),
    # then from each hidden sample's own enqueue; a sample the GPU caught up with is
    # retaken behind a sleep four times longer
    sleep_s = min(MAX_AHEAD_S, 2 * min(enqueue or [1e-3]) + 1e-3) if ahead else 0.0
    if ahead and state and not enqueue and state.get("sleep_s"):
        sleep_s = state["sleep_s"]
    out: list[float] = []
    hidden = 0
    blocked = False
    for _ in range(samples):
        if setup:
            setup()
            torch.cuda.synchronize()
        for attempt in range(4 if ahead and not blocked else 1):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(stream):
                if ahead:
                    torch.cuda._sleep(int(sleep_s * rate))
                start.record(stream)
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                enqueue.append(time.perf_counter() - t0)
                end.record(stream)
            pending = ahead and not start.query()  # after end.record: nothing untimed after
            end.synchronize()
            if not ahead or pending:
                hidden += pending
                if pending:
                    sleep_s = min(MAX_AHEAD_S, 2 * enqueue[-1] + 1e-3)
                break
            if enqueue[-1] >= sleep_s:
                if attempt == 0 and 2 * enqueue[-1] + 1e-3 <= MAX_AHEAD_S:
                    sleep_s = 2 * enqueue[-1] + 1e-3  # the sleep was too short: once more
                    continue
                # the host was held back by the GPU (a full launch queue: CUDA keeps ~1000
                # pending operations per stream; or a sync inside fn): no sleep can hide
                # that, so keep the sample and the rest, counted as not hidden, unretaken
                blocked = True
                break
            sleep_s = min(MAX_AHEAD_S, 4 * sleep_s)  # the GPU caught up with the host
        out.append(start.elapsed_time(end) / 1e3)
    if info is not None:
        info.update(enqueue_s=sorted(enqueue)[len(enqueue) // 2] if enqueue else 0.0,
                    sleep_s=sleep_s, hidden_samples=hidden, samples=samples, host_bound=blocked)
    if state is not None and ahead:
        state["sleep_s"] = sleep_s
    return out


def time_cuda_pair(fa: Callable[[], Any], sa: Any, fb: Callable[[], Any], sb: Any, *,
                   warmup: int, samples: int, ahead: bool = True,
                   info: dict[str, Any] | None = None
                   ) -> tuple[list[float], list[float], list[float]]:
    """Run fa on stream sa and fb on stream sb at the same time. Returns seconds per
    sample for each, and for the span from the first start to the last end, all from
    CUDA events recorded on the two streams.

    ahead (default): both streams start behind one GPU sleep that outlasts the host's
    enqueue of fa and fb, so fb is not held back by fa's enqueue time; ``info`` as in
    ``time_cuda`` (a sample counts as hidden when the GPU was still asleep once both
    were enqueued)."""
    import torch

    ta: list[float] = []
    tb: list[float] = []
    span: list[float] = []
    rate = sleep_cycles_per_s() if ahead else 0.0
    sleep_s = 1e-3
    enqueue: list[float] = []
    hidden = 0
    for i in range(warmup + samples):
        torch.cuda.synchronize()
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(5)]
        with torch.cuda.stream(sa):
            if ahead:
                torch.cuda._sleep(int(sleep_s * rate))
            ev[4].record(sa)
        sb.wait_event(ev[4])
        t0 = time.perf_counter()
        for (fn, st, e0, e1) in ((fa, sa, ev[0], ev[1]), (fb, sb, ev[2], ev[3])):
            with torch.cuda.stream(st):
                e0.record(st)
                fn()
                e1.record(st)
        enqueue.append(time.perf_counter() - t0)
        pending = ahead and not ev[4].query()
        torch.cuda.synchronize()
        if ahead:  # from the latest enqueue: the first one may include Triton's compile
            sleep_s = min(MAX_AHEAD_S, 2 * enqueue[-1] + 1e-3)
        if i < warmup:
            continue
        hidden += pending
        a = ev[0].elapsed_time(ev[1]) / 1e3
        b = ev[2].elapsed_time(ev[3]) / 1e3
        gap = ev[0].elapsed_time(ev[2]) / 1e3  # b's start relative to a's start
        ta.append(a)
        tb.append(b)
        span.append(max(a, gap + b) - min(0.0, gap))
    if info is not None:
        info.update(enqueue_s=sorted(enqueue)[len(enqueue) // 2] if enqueue else 0.0,
                    sleep_s=sleep_s, hidden_samples=hidden, samples=samples)
    return ta, tb, span


def method_block(*, cuda: bool, warmup: int, samples: int) -> dict[str, Any]:
    """The measurement method, recorded once per result file."""
    return {
        "timer": "cuda_events" if cuda else "perf_counter",
        "timer_detail": (
            "CUDA events recorded on the stream that carries the work; host-side waits "
            "(file reads) timed with time.perf_counter"
            if cuda else "time.perf_counter around host work (no GPU on this machine)"
        ),
        "warmup": warmup,
        "samples": samples,
        "statistic": "median of samples",
        "spread": "p10, p90, coefficient of variation (stdev/mean), n",
        "units": {
            "bandwidth": "GB/s, GB = 1e9 bytes",
            "size": "bytes; GiB = 2**30 where printed",
            "time": "seconds",
            "throughput": "tokens/s",
        },
        "bytes_counted": (
            "payload bytes moved, counted once per direction (a copy counts the bytes it "
            "moves once, not read plus write); padding and staging copies are not counted"
        ),
        "verification": "moved data checked once per case, outside the timed region",
    }


def capture_graph(fn: Callable[[], Any]) -> Any:
    """fn captured in a CUDA graph (after one run on a side stream, as torch requires
    for warm-up: Triton compiles, the caching allocator settles). Returns the graph;
    ``graph.replay()`` re-runs fn's device work with no host work per kernel. Raises
    whatever capture raises (the caller falls back to eager timing and says so)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    # the outer stream context restores the current stream even when an invalidated
    # capture makes torch.cuda.graph's exit raise before it restores its own
    with torch.cuda.stream(torch.cuda.current_stream()):
        with torch.cuda.graph(graph):
            fn()
    torch.cuda.synchronize()
    return graph
