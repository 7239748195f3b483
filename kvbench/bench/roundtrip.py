"""Bit-exact page round trips between every pair of available tiers.

The first real case of a run: random bytes in random pages of a pool on tier A are
moved in random order to random pages on tier B and back to fresh pages on A, then
compared byte for byte. It proves the tiers, the pool and the movers before anything
is timed. A model with further KV components (MLA's indexer keys, DeepSeek-V4's
compressed entries) has each one's pages checked too (``<pair>/<layout>/<component>``).
The remote tier's pairs run in a launched group (``--ranks 2``) and skip elsewhere.
"""

from __future__ import annotations

import itertools
import random

from kvbench.bench import Benchmark, Case, Highlights, RunContext, Skip
from kvbench.results import make_case
from kvbench.spec import PageSpec, get_format
from kvbench.tiers import TIER_NAMES, make_tier
from kvbench.tiers import tier_class as make_tier_class

BENCH_KEY = "roundtrip"


def _components(ctx: RunContext) -> list[str]:
    """The pages a pair is checked with: the primary component's (""), then each other
    component that grows with context (indexer keys, compressed entries, ...) in pages of
    its own entries (PageSpec.component); fixed-size compressor state is not paged."""
    return ["", *(c.name for c in ctx.model.components[1:] if c.grows)]


def _spec(ctx: RunContext, layout: str, component: str = "") -> PageSpec:
    return PageSpec(ctx.model, get_format(ctx.formats[0]), ctx.tokens_per_page, layout, component)


def _pages(ctx: RunContext) -> int:
    """Pages moved each way: positive, and the 2n-page pools must fit in host memory."""
    from kvbench.units import GB

    mem, most, why = ctx.host_memory_bytes(), None, ""
    if mem and "roundtrip.pages" in ctx.options:
        page = max(PageSpec(ctx.model, get_format(ctx.formats[0]), ctx.tokens_per_page, lay).page_bytes
                   for lay in ctx.layouts)
        most = max(1, mem // (2 * page))
        why = f"a pool of 2 x pages of {page:,} B must fit in {mem / GB:,.1f} GB of host memory"
    return ctx.opt_int("roundtrip.pages", 16 if ctx.quick else 64, maximum=most, why=why)


def round_trip(ctx: RunContext, src_name: str, dst_name: str, layout: str, component: str = "") -> dict:
    import torch

    from kvbench.store import PagePool, move_pages

    spec = _spec(ctx, layout, component)
    n = _pages(ctx)
    rng = random.Random(ctx.seed)
    gen = torch.Generator().manual_seed(ctx.seed)
    tiers = {name: make_tier(name, ctx.nvme_dir) for name in {src_name, dst_name}}
    for name, tier in tiers.items():
        ok, why = tier.available()
        if not ok:
            raise Skip(f"tier {name} unavailable: {why}")
    pools = []
    try:
        # 2n pages on the source: the data's first home and its return home
        a = PagePool(tiers[src_name], spec, 2 * n)
        pools.append(a)
        b = PagePool(tiers[dst_name], spec, 2 * n)
        pools.append(b)
        data = torch.randint(0, 256, (n, spec.page_bytes), dtype=torch.uint8, generator=gen)
        home = rng.sample(range(2 * n), n)
        a.write_pages(home, data)
        away = rng.sample(range(2 * n), n)
        order = list(range(n))
        rng.shuffle(order)
        move_pages(a, [home[i] for i in order], b, [away[i] for i in order])
        back = [p for p in range(2 * n) if p not in home]
        rng.shuffle(back)
        move_pages(b, away, a, back)
        got = a.read_pages(back).to("cpu")
        if not torch.equal(got, data):
            bad = int((got != data).any(dim=1).sum())
            raise AssertionError(f"{bad} of {n} pages differ after {src_name}->{dst_name}->{src_name}")
    finally:
        for p in pools:
            p.close()
        for t in tiers.values():
            if hasattr(t, "close"):
                t.close()
    return make_case(
        BENCH_KEY, _name(src_name, dst_name, layout, component),
        {"src": src_name, "dst": dst_name, "layout": layout, "pages": n, **spec.describe(),
         "src_label": tiers[src_name].label, "dst_label": tiers[dst_name].label},
        metrics={"bytes_verified": 2 * n * spec.page_bytes, "pages_verified": 2 * n},
        units={"bytes_verified": "B", "pages_verified": "pages"},
        notes=["bit-exact: random pages, random order, there and back"],
    )


def _name(src: str, dst: str, layout: str, component: str) -> str:
    return f"{src}<->{dst}/{layout}" + (f"/{component}" if component else "")


def footprint(ctx: RunContext, src_name: str, dst_name: str, layout: str, component: str = "") -> dict[str, int]:
    """Bytes a round trip holds at once: a pool of 2n pages on each tier of the pair
    (rows padded to 4 KiB on a file tier), plus on pageable host memory the n random
    pages, the n pages read back and n pages of staging a move may need (an upper bound)."""
    from kvbench.footprint import on_tier, total
    from kvbench.units import align_up

    spec = _spec(ctx, layout, component)
    n, pb = _pages(ctx), spec.page_bytes
    row = lambda t: align_up(pb, 4096) if make_tier_class(t).file_backed else pb  # noqa: E731
    return total(on_tier(src_name, 2 * n * row(src_name), ctx.cuda),
                 on_tier(dst_name, 2 * n * row(dst_name), ctx.cuda), {"pageable": 3 * n * pb})


def plan(ctx: RunContext) -> list[Case]:
    _pages(ctx)  # a bad --set roundtrip.pages fails before anything runs
    cases = []
    # every pair, the remote tier's too: its pairs run in a launched group (kvbench run
    # --bench roundtrip --ranks 2, or torchrun), where a peer rank holds its pages, and
    # skip with the tier's reason anywhere else
    for src, dst in itertools.combinations(TIER_NAMES, 2):
        for layout in ctx.layouts:
            for comp in _components(ctx):
                cases.append(Case(
                    _name(src, dst, layout, comp), {"src": src, "dst": dst, "layout": layout},
                    lambda c, s=src, d=dst, lay=layout, k=comp: round_trip(c, s, d, lay, k),
                    footprint=lambda c, s=src, d=dst, lay=layout, k=comp: footprint(c, s, d, lay, k),
                ))
    return cases


def highlights(doc: dict) -> Highlights | None:
    """Per tier pair that ran: pages verified bit-exact over its layouts."""
    cases = [c for c in doc["cases"] if c["bench"] == BENCH_KEY]
    if not cases:
        return None
    pairs: dict[str, list[dict]] = {}
    for c in cases:
        pairs.setdefault(c["name"].split("/")[0], []).append(c)
    rows = []
    for pair, cs in pairs.items():
        ok = [c for c in cs if c["status"] == "ok"]
        why = next((c.get("reason") for c in cs if c["status"] != "ok"), "") or ""
        rows.append([pair, f"{len(ok)} of {len(cs)} ok",
                     sum(c["metrics"].get("pages_verified", 0) for c in ok) if ok else None,
                     why.split(":")[0] if why else ""])
    return Highlights("roundtrip: bit-exact page round trips per tier pair",
                      [("tiers", ""), ("cases", ""), ("pages verified", "pages"), ("not run because", "")], rows)


BENCH = Benchmark(
    key=BENCH_KEY,
    description="bit-exact paged round trips between every pair of tiers (correctness first)",
    plan=plan,
    headline="bytes_verified",
    headline_unit="B",
    columns=("pages_verified",),
    highlights=highlights,
    also_distributed=True,
    options={
        'roundtrip.pages': 'pages moved each way per tier pair (default 16 quick, 64 full)',
    },
)
