"""Remote benchmark: KV pages fetched from and put to a peer rank's host memory (the
``remote`` tier, torch.distributed over gloo; with ``--set remote.transport=nixl`` or
``mooncake``, the engine's one-sided READs and WRITEs: kvbench.tiers.remote_onesided),
each case sampled alternately with a contiguous transfer of the same bytes between the
same ranks over the same transport: its ceiling.

Runs on rank 0 of a multi-rank launch (``kvbench run --bench remote --ranks 2``, or
torchrun) while the other ranks serve the pages. Cases (``kind`` in each config):
  ``paged``  remote->dram (fetch) and dram->remote (put) of scattered pages (random
             ids on the peer, contiguous rows here), per format, layout and batching:
             ``per_page`` (one message a page, each completed before the next),
             ``grouped`` (the same messages posted as one batch_isend_irecv group) or
             ``coalesced`` (gathered or scattered on the peer through one staging
             buffer, in messages of the size the ceiling found fastest: chunk_bytes);
  ``sweep``  remote->dram from 16 to 1024 tokens per page (first format, layer layout);
  remote->hbm and hbm->remote (with a CUDA device): the same, through this rank's pinned
             host memory (hbm.py), the ceiling likewise; peer HBM to HBM over NCCL is not
             built (a skip says so).
A sample: the request, its page list and every data message (and for a put the peer's
acknowledgement that it stored them); the ceiling sample does the same with the bytes
contiguous, in one message or a stream of messages of one size. Bytes counted: payload bytes moved once. GB = 1e9 B. Over loopback
(every rank on one host) the figures measure the gloo/TCP stack and memory copies, not
a NIC; the case says which link it measured."""

from __future__ import annotations

import random
from typing import Any

from kvbench.bench import Benchmark, Case, Highlights, RunContext, Skip
from kvbench.measure import check_limits, gbps, summarize
from kvbench.results import make_case, skipped_case
from kvbench.spec import PageSpec, get_format
from kvbench.units import MiB

BENCH_KEY = "remote"
DIRECTIONS = ("remote->dram", "dram->remote")
GPU_DIRECTIONS = ("remote->hbm", "hbm->remote")
SWEEP_TOKENS = (16, 32, 64, 128, 256, 512, 1024)
SWEEP_TOKENS_QUICK = (16, 64, 256, 1024)
#: message sizes the contiguous ceiling tries besides one message
CEILING_MESSAGES = (1 * MiB, 2 * MiB, 4 * MiB, 8 * MiB)


def sample_bytes(ctx: RunContext) -> int:
    return ctx.opt_size("remote.bytes", (64 if ctx.quick else 256) * MiB, ctx.host_memory_bytes(), "host memory")


def chunk_bytes(ctx: RunContext, ceiling_message: int = 0) -> tuple[int, str]:
    """A coalesced transfer's largest message and why: ``--set remote.chunk_bytes``;
    else the message size the contiguous ceiling found fastest (the same messages as
    the transfer it is held to); else CHUNK_BYTES (one message was fastest: chunks keep
    the peer's gather overlapped with the sends)."""
    from kvbench.tiers.remote import CHUNK_BYTES

    if "remote.chunk_bytes" in ctx.options:
        return ctx.opt_size("remote.chunk_bytes", CHUNK_BYTES), "--set remote.chunk_bytes"
    if ceiling_message:
        return ceiling_message, "the message size the contiguous ceiling found fastest"
    return CHUNK_BYTES, f"default ({CHUNK_BYTES // MiB} MiB; the ceiling was one message)"


def transport(options: dict[str, str]) -> str:
    """``--set remote.transport`` (default torch), checked before anything runs."""
    from kvbench.errors import KvbenchError
    from kvbench.tiers.remote import TRANSPORTS

    name = options.get("remote.transport", "torch")
    if name not in TRANSPORTS:
        raise KvbenchError(f"--set remote.transport={name}: unknown; known: {', '.join(TRANSPORTS)}")
    return name


def check(options: dict[str, str]) -> None:
    transport(options)


def budget_s(ctx: RunContext) -> float:
    return ctx.opt_seconds("remote.budget_s", 4.0 if ctx.quick else 15.0)


def _peer(ctx: RunContext) -> int:
    return ctx.opt_int("remote.peer", 1)


def _link(ctx: RunContext) -> dict[str, Any]:
    return ctx.environment.get("distributed") or {}


def remote_tier(peer: int, batching: str, chunk: int, name: str) -> Any:
    """The remote tier over transport ``name``: a one-sided engine's tier (NIXL, Mooncake:
    kvbench.tiers.remote_onesided) where its package is importable, else RemoteTier
    (torch.distributed; for a transport that cannot run, its ``available()`` says why)."""
    from kvbench.tiers.remote import RemoteTier, transport_status

    if name != "torch" and transport_status(name)[0]:
        from kvbench.tiers.remote_onesided import OneSidedTier

        return OneSidedTier(peer, batching, chunk, name)
    return RemoteTier(peer, batching, chunk, name)


def _tier(ctx: RunContext, batching: str) -> Any:
    tier = remote_tier(_peer(ctx), batching, chunk_bytes(ctx)[0], transport(ctx.options))
    ok, why = tier.available()
    if not ok:
        raise Skip(f"tier remote unavailable: {why}")
    return tier


def _arms(ctx: RunContext, fetch: bool, pool: Any, ids: list[int], local: Any,
          batching: str, end: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The paged arm, its ceiling and (when that is not one message) the one-message
    contiguous transfer; and the ceiling chosen (``label``, ``note``) with the chunk
    a coalesced transfer uses (``chunk``, ``chunk_from``: chunk_bytes). The ceiling: the
    same bytes contiguous between the same ranks, the fastest of one message and
    CEILING_MESSAGES-sized messages in two untimed looks each (over gloo, a stream of
    1-8 MiB messages moves contiguous bytes faster than one large message). ``end``: the
    HBM end of a remote->hbm or hbm->remote case (hbm.HbmEnd), whose copy to or from HBM
    every arm includes; None for dram."""
    from kvbench.bench.remote.hbm import joined
    from kvbench.measure.paired import best_of, host_arm

    buf, stride, width = pool.buffer, pool.stride, pool.page_bytes
    nbytes, flat = len(ids) * width, local.view(-1)
    contiguous = buf.read_into if fetch else buf.write_from
    sizes = {f"{m // MiB} MiB messages": m for m in CEILING_MESSAGES if m < nbytes}
    ceil_step = end.contiguous(flat) if end else None
    cands = {"one message": host_arm(joined(lambda: contiguous(0, flat), ceil_step, fetch), nbytes)}
    cands.update({k: host_arm(joined(lambda m=m: contiguous(0, flat, m), ceil_step, fetch), nbytes)
                  for k, m in sizes.items()})
    best = best_of(cands)
    chunk, chunk_from = chunk_bytes(ctx, sizes.get(best, 0))
    move = buf.fetch_rows if fetch else buf.put_rows
    paged = joined(lambda: move(ids, stride, width, local, batching, chunk), end.paged(local) if end else None, fetch)
    arms = {"paged": host_arm(paged, nbytes),
            "ceiling": cands[best]}
    if best != "one message":
        arms["one_message"] = cands["one message"]
    via = " and the same one copy to or from HBM" if end else ""
    note = (f"ceiling: the same {nbytes:,} B contiguous between the same ranks{via}, the fastest of "
            f"{', '.join(cands)} in two untimed looks each: {best}; sampled alternately with the paged path")
    return arms, {"label": best, "note": note, "chunk": chunk, "chunk_from": chunk_from}


def _device_end(direction: str) -> bool:
    """Whether this rank's end of ``direction`` is device memory (remote->hbm, hbm->remote):
    the pages then cross pinned host memory (hbm.HbmEnd)."""
    from kvbench.tiers import tier_class

    return any(tier_class(t).device_memory for t in direction.split("->") if not tier_class(t).remote)


def _sample(ctx: RunContext, direction: str, spec: PageSpec, batching: str) -> tuple[Any, int, dict[str, Any]]:
    """Fill a remote pool of 2n pages, sample the paged path and its ceiling alternately,
    then check the pages bit-exact (untimed). Returns (the Interleaved result, n, the
    ceiling chosen: _arms). remote->hbm and hbm->remote: through pinned rows (hbm.HbmEnd)."""
    import torch

    from kvbench.measure.paired import interleave, min_pairs_for
    from kvbench.store import PagePool
    from kvbench.tiers.dram import aligned_host_empty

    n = max(2, sample_bytes(ctx) // spec.page_bytes)
    rng = random.Random(f"{ctx.seed}/{direction}/{spec.fmt.name}/{spec.layout}/{spec.tokens}")
    gen = torch.Generator().manual_seed(ctx.seed)
    fetch = direction.startswith("remote")
    pool, end = PagePool(_tier(ctx, batching), spec, 2 * n), None
    try:
        ids = rng.sample(range(2 * n), n)
        local = aligned_host_empty(n * spec.page_bytes, pin=ctx.cuda).view(n, spec.page_bytes)
        data = torch.randint(0, 256, (2 * n if fetch else n, spec.page_bytes), dtype=torch.uint8, generator=gen)
        if fetch:
            pool.write_pages(range(2 * n), data, method="coalesced")
        else:
            local.copy_(data)
        if _device_end(direction):
            from kvbench.bench.remote.hbm import HbmEnd

            end = HbmEnd(ctx, spec, n, fetch, None if fetch else data, direction)
        arms, ceiling = _arms(ctx, fetch, pool, ids, local, batching, end)
        ratios = {"pct_of_ceiling": ("paged", "ceiling")}
        if "one_message" in arms:
            ratios["pct_of_one_message"] = ("paged", "one_message")
        res = interleave(arms, ratios, budget_s=budget_s(ctx), min_pairs=min_pairs_for(ctx.samples),
                         warmup=ctx.warmup)
        res.release()
        pool.buffer.calls = 0  # what the tier records of one paged move (a one-sided engine: its calls)
        if fetch:
            pool.buffer.fetch_rows(ids, pool.stride, spec.page_bytes, local, batching, ceiling["chunk"])
            ceiling["tier"], ceiling["record"] = pool.tier, pool.tier.case_config(pool.buffer)
            if end:
                end.paged(local)()
            ok = torch.equal(end.pages() if end else local, data[ids])
        else:  # the ceiling wrote over the pool's first rows: put the pages once more
            if end:
                end.paged(local)()
            pool.buffer.put_rows(ids, pool.stride, spec.page_bytes, local, batching, ceiling["chunk"])
            ceiling["tier"], ceiling["record"] = pool.tier, pool.tier.case_config(pool.buffer)
            ok = torch.equal(pool.read_pages(ids, method="coalesced"), data)
        if not ok:
            raise AssertionError(f"pages differ after {direction} ({batching})")
    finally:
        if end:
            end.close()
        pool.close()
    return res, n, ceiling


def paged_case(ctx: RunContext, direction: str, fmt: str, layout: str, tokens: int, batching: str,
               kind: str = "paged") -> dict[str, Any]:
    from kvbench.measure import paired
    from kvbench.tiers.remote import messages

    spec = PageSpec(ctx.model, get_format(fmt), tokens, layout)
    res, n, ceiling = _sample(ctx, direction, spec, batching)
    link = _link(ctx)
    msgs = messages(batching, n, spec.page_bytes, ceiling["chunk"])
    src, _, dst = direction.partition("->")
    cfg = {"kind": kind, "direction": direction, "src": src, "dst": dst, "batching": batching, "pages": n,
           "bytes": n * spec.page_bytes, "messages": msgs, "peer": _peer(ctx),
           "ceiling": f"contiguous, {ceiling['label']}", "transport": transport(ctx.options),
           **({"chunk_bytes": ceiling["chunk"], "chunk_from": ceiling["chunk_from"]} if batching == "coalesced" else {}),
           "backend": link.get("backend"), "link": link.get("link"), "loopback": link.get("loopback"),
           "model": ctx.model.name, **spec.describe()}
    if _device_end(direction):
        from kvbench.bench.remote.hbm import PATH

        cfg["path"] = PATH
    cfg.update(ceiling["record"])
    secs, ceil = res.arms["paged"].seconds, res.arms["ceiling"].seconds
    extra = [(a - b) / n * 1e6 for a, b in zip(secs, ceil)]
    tier = ceiling["tier"]
    notes = [ceiling["note"], *tier.case_notes(cfg)]
    if _device_end(direction):
        notes.append(f"through this rank's pinned host memory: {cfg['path']}; both steps in every sample, "
                     "one after the other")
    if link.get("loopback"):
        notes.append(f"loopback: every rank on one host; this measures the {tier.stack} and memory copies, not a NIC")
    samples = {"gbps": gbps(n * spec.page_bytes, secs), "seconds": secs, "ceiling_gbps": gbps(n * spec.page_bytes, ceil)}
    units = {"gbps": "GB/s", "seconds": "s", "ceiling_gbps": "GB/s (the same bytes contiguous)"}
    if "one_message" in res.arms:
        samples["one_message_gbps"] = gbps(n * spec.page_bytes, res.arms["one_message"].seconds)
        units["one_message_gbps"] = "GB/s (the same bytes contiguous in one message)"
    case = make_case(BENCH_KEY, _name(direction, spec, batching, kind), cfg, samples=samples, units=units,
                     notes=notes)
    paired.record(case, res, percent=("pct_of_ceiling", "pct_of_one_message"))
    case["metrics"]["ceiling_gbps"] = case["stats"]["ceiling_gbps"]["median"]
    case["metrics"]["extra_us_per_page"] = summarize(extra)["median"]
    case["metrics"]["messages"] = msgs
    case["units"].update(extra_us_per_page="us (per page: median per pair of paged time minus ceiling time, "
                                           "over the pages)",
                         messages="count (data messages per sample)",
                         pct_of_ceiling="% (median of per-pair ratios: paged GB/s over the contiguous transfer's)",
                         pct_of_one_message="% (median of per-pair ratios: paged GB/s over one contiguous "
                                            "message's)")
    _nic(case, link)
    return check_limits(ctx, case, direction)


def _nic(case: dict[str, Any], link: dict[str, Any]) -> None:
    """Across hosts: the NIC's nominal rate (sysfs; gloo's interface, else the fastest)
    and the share of it; a note instead when there is none to hold the figure to."""
    from kvbench.distributed import link_nic

    if link.get("loopback") or not link:
        return
    nic, why = link_nic(link)
    if nic is None:
        case["notes"].append(why)
        return
    case["metrics"]["nic_gbps"] = nic["gbps"]
    case["metrics"]["pct_of_nic"] = 100.0 * case["metrics"]["gbps"] / nic["gbps"]
    case["units"].update(nic_gbps=f"GB/s ({nic['iface']} {nic['speed_mbps']:,} Mb/s, sysfs)", pct_of_nic="%")


def _name(direction: str, spec: PageSpec, batching: str, kind: str) -> str:
    parts = ([kind] if kind != "paged" else []) + [direction, spec.layout, spec.fmt.name, f"{spec.tokens}tok", batching]
    return "/".join(parts)


#: why a peer's HBM straight into this rank's HBM does not run
NCCL_WHY = ("peer HBM to HBM over NCCL is not built: the remote tier holds its pages in the peer's host "
            "memory and moves host tensors over gloo (remote->hbm and hbm->remote cross this rank's pinned "
            "host memory); NCCL would also need a GPU of its own for every rank")


def _skip(name: str, direction: str, why: str) -> Case:
    return Case(name, {"direction": direction},
                lambda c: skipped_case(BENCH_KEY, name, {"direction": direction}, why))


def _paged_cases(ctx: RunContext, direction: str, batchings: tuple[str, ...]) -> list[Case]:
    """One paged case per format, layout and batching of ``direction``."""
    t, cases = ctx.tokens_per_page, []
    for f in ctx.formats:
        for lay in ctx.layouts:
            spec = PageSpec(ctx.model, get_format(f), t, lay)
            for b in batchings:
                cases.append(Case(_name(direction, spec, b, "paged"), {"direction": direction, "batching": b},
                                  lambda c, d=direction, f=f, lay=lay, b=b: paged_case(c, d, f, lay, t, b)))
    return cases


def _gpu_cases(ctx: RunContext, batchings: tuple[str, ...]) -> list[Case]:
    """remote->hbm and hbm->remote per format, layout and batching (through pinned host
    memory: hbm.HbmEnd) with a CUDA device, else one skip each with the reason; and the
    NCCL path's skip."""
    if not ctx.cuda:
        from kvbench.tiers.hbm import cuda_status

        why = f"needs a CUDA device: {cuda_status()[1]}"
        return [_skip(f"{d}/*", d, why) for d in GPU_DIRECTIONS]
    cases = []
    for d in GPU_DIRECTIONS:
        cases += _paged_cases(ctx, d, batchings) + [_skip(f"{d}/nccl", d, NCCL_WHY)]
    return cases


def plan(ctx: RunContext) -> list[Case]:
    from kvbench.tiers.remote import BATCHING

    sample_bytes(ctx), chunk_bytes(ctx), budget_s(ctx), _peer(ctx), transport(ctx.options)  # a bad --set fails here
    cases = [c for d in DIRECTIONS for c in _paged_cases(ctx, d, BATCHING)]
    f = ctx.formats[0]
    for tok in SWEEP_TOKENS_QUICK if ctx.quick else SWEEP_TOKENS:
        spec = PageSpec(ctx.model, get_format(f), tok, "layer")
        for b in BATCHING:
            cases.append(Case(_name("remote->dram", spec, b, "sweep"), {"direction": "remote->dram", "batching": b},
                              lambda c, tok=tok, b=b: paged_case(c, "remote->dram", f, "layer", tok, b, "sweep")))
    return cases + _gpu_cases(ctx, BATCHING)


def available(ctx: RunContext) -> tuple[bool, str]:
    from kvbench.tiers.remote import CHUNK_BYTES

    return remote_tier(_peer(ctx), "coalesced", CHUNK_BYTES, transport(ctx.options)).available()


def highlights(doc: dict[str, Any]) -> Highlights | None:
    """Per direction and batching at the run's page size: GB/s and % of the ceiling."""
    rows = []
    for c in doc["cases"]:
        if c["bench"] != BENCH_KEY or c["status"] != "ok" or c["config"].get("kind") != "paged":
            continue
        cfg, m = c["config"], c["metrics"]
        rows.append([cfg["direction"], f"{cfg['layout']}/{cfg['format']}/{cfg['tokens_per_page']}tok", cfg["batching"],
                     m["gbps"], m.get("pct_of_ceiling"), m.get("ceiling_gbps"), m.get("pct_of_one_message"),
                     m.get("extra_us_per_page"), "loopback" if cfg.get("loopback") else (cfg.get("link") or "")])
    if not rows:
        return None
    return Highlights("remote: paged transfers to and from a peer rank (paired % of the same-run contiguous "
                      "send/recv)", [("direction", ""), ("pages", ""), ("batching", ""), ("GB/s", "GB/s"),
                                     ("% of ceiling", "%"), ("ceiling GB/s", "GB/s"), ("% of one message", "%"),
                                     ("extra per page", "us"), ("link", "")], rows)


BENCH = Benchmark(
    key=BENCH_KEY,
    description="paged KV fetched from and put to a peer rank (torch.distributed over gloo, NIXL or "
                "Mooncake) against a same-run contiguous transfer",
    plan=plan,
    available=available,
    headline="gbps",
    headline_unit="GB/s",
    columns=("pct_of_ceiling", "ceiling_gbps", "pct_of_one_message", "extra_us_per_page", "messages",
             "pct_of_nic", "nic_gbps"),
    highlights=highlights,
    distributed=True,
    check=check,
    options={
        "remote.bytes": "payload bytes per timed sample (default 64MiB quick, 256MiB full)",
        "remote.chunk_bytes": "largest message of a coalesced transfer (default: the message size the "
                              "contiguous ceiling found fastest, else 4MiB)",
        "remote.transport": "torch (default: torch.distributed point to point), nixl (NIXL READ/WRITE over "
                            "UCX) or mooncake (Mooncake's transfer engine); those two skip with the reason "
                            "unless their pip package is installed",
        "remote.budget_s": "seconds a case samples its paired figures for before it stops short of +-5% "
                           "(default 4 quick, 15 full)",
        "remote.peer": "the rank that holds the pages (default 1)",
    },
)
