"""Soak: data integrity of pages moved back and forth between tiers at volume.

For every pair of tiers (``dram<->nvme`` on any machine; the ``hbm`` pairs with CUDA)
and every format the run selects, a case keeps ``LIVE_PAGES`` pages of random bytes
spread over two pools, one on each tier, and moves ``soak.pages`` of them in all
(``soak.rounds`` rounds): each batch takes random pages in random order and moves each
to a random free page of the other tier through ``kvbench.store.move_pages``. Every
page's CRC-32 (``zlib.crc32`` of its payload bytes) is taken from the data when it is
first written; the page is read back and checked after every move, and every page at
rest is checked at the end of each round (so a write that lands on the wrong page is
caught too). Checksums are computed outside the timed region. The first 8 bytes of a
page hold its id (int64, little endian), so a report can say which page a misplaced
one holds.

After each round the process's resident set (``VmRSS`` of ``/proc/self/status``) and
its open file descriptors (entries of ``/proc/self/fd``) are recorded; growth from the
end of the first round (the baseline: pools, buffers and lazy set-up are in place by
then) to the end of the last beyond ``soak.rss_tolerance_mib`` MiB, or by any file
descriptor, makes the case an error, as does any corrupted page (its ids in the
reason).

Formats (and layouts) change only the page size here; pages hold ``soak.tokens_per_page``
tokens (default 1, so 10^5 moves stay fast) of the smallest selected layout
(``layer`` when selected). Not a bandwidth benchmark: ``pages_per_s`` counts the moves
only, one Python call per batch, the file tier mostly in the page cache.

It is not in a default ``kvbench run``. The long soak (10^5 moves per tier pair and
format)::

    kvbench run --bench soak --full

and a short one: ``kvbench run --bench soak --set soak.pages=20000`` (the quick default).
"""

from __future__ import annotations

import gc
import itertools
import os
import random
import time
import zlib
from typing import Any, Sequence

from kvbench.bench import Benchmark, Case, Highlights, RunContext, tier_or_skip
from kvbench.errors import KvbenchError
from kvbench.results import make_case
from kvbench.spec import LAYOUTS, PageSpec, get_format
from kvbench.tiers import TIER_NAMES, tier_class

BENCH_KEY = "soak"

#: pages alive at once in a case, spread over its two pools (each pool can hold all of
#: them, so any batch finds free pages on the other side)
LIVE_PAGES = 1024
#: pages moved by one move_pages call
BATCH = 256
#: page ids shown in an error's reason (all of them go into the notes, up to NOTE_IDS)
REASON_IDS = 20
NOTE_IDS = 1000
#: open file descriptors may not grow at all between the end of round 1 and the end:
#: the pools' files are open before round 1, and nothing a move does should open more
FD_TOLERANCE = 0
#: RSS may grow this much (MiB) before it counts as a leak: allocator arenas settle
#: over the first rounds; a leak of one 4 KiB page per move is 400 MB over 10^5 moves
RSS_TOLERANCE_MIB = 32.0
#: header bytes of each page that hold its id
ID_BYTES = 8


# ----------------------------------------------------------------------------- options
def _positive_int(ctx: RunContext, key: str, default: int) -> int:
    v = ctx.opt(key, default, int)
    if v <= 0:
        raise KvbenchError(f"--set {key}={ctx.options.get(key)}: must be positive")
    return v


def settings(ctx: RunContext) -> dict[str, Any]:
    """The resolved options, validated (one-line KvbenchError for a bad one)."""
    pages = _positive_int(ctx, "soak.pages", 20_000 if ctx.quick else 100_000)
    rounds = _positive_int(ctx, "soak.rounds", 10)
    if rounds > pages:
        raise KvbenchError(f"--set soak.rounds={rounds}: more rounds than the {pages} page moves")
    tokens = _positive_int(ctx, "soak.tokens_per_page", 1)
    rss_tol = ctx.opt("soak.rss_tolerance_mib", RSS_TOLERANCE_MIB, float)
    if not rss_tol > 0:
        raise KvbenchError(f"--set soak.rss_tolerance_mib={ctx.options.get('soak.rss_tolerance_mib')}: "
                           "must be a positive number of MiB")
    layout = min(ctx.layouts or ["layer"], key=lambda lay: (lay != "layer", LAYOUTS.index(lay)))
    return {"pages": pages, "rounds": rounds, "tokens_per_page": tokens, "layout": layout,
            "rss_tolerance_mib": rss_tol, "fd_tolerance": FD_TOLERANCE,
            "live_pages": min(LIVE_PAGES, pages), "batch": BATCH}


# ----------------------------------------------------------------------------- process
def rss_bytes() -> int | None:
    """Resident set size of this process in bytes (VmRSS), None where /proc is absent."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB (KiB)
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - no figure is reported as none
        return None


def open_fds() -> int | None:
    """Open file descriptors of this process (the listing's own fd counts each time)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def growth(series: Sequence[float | None], tolerance: float) -> tuple[float | None, bool]:
    """(last - first, grew beyond ``tolerance``) of a per-round series; (None, False)
    when it has fewer than two figures or any is missing."""
    if len(series) < 2 or any(v is None for v in series):
        return None, False
    g = series[-1] - series[0]  # type: ignore[operator]
    return g, g > tolerance


# ----------------------------------------------------------------------------- pages
def checksum(row: Any) -> int:
    """CRC-32 of one page's bytes (a contiguous 1-D uint8 numpy array or buffer)."""
    return zlib.crc32(row)


def move(src: Any, src_ids: Sequence[int], dst: Any, dst_ids: Sequence[int]) -> None:
    """The mover under test (tests replace it to corrupt a page)."""
    from kvbench.store import move_pages

    move_pages(src, src_ids, dst, dst_ids)


def _header_id(row: Any) -> int | None:
    if len(row) < ID_BYTES:
        return None
    return int.from_bytes(bytes(row[:ID_BYTES]), "little", signed=True)


class Soak:
    """Pages on two pools (tiers ``a`` and ``b``) and where each one is.

    ``where[p] = (tier name, page index in that tier's pool)``; ``crc[p]`` the checksum
    of page p's bytes taken when it was written; ``bad`` page id -> first finding."""

    def __init__(self, pools: dict[str, Any], live: int, rng: random.Random, seed: int,
                 sync: Any = None) -> None:
        import torch

        self.pools = pools
        self.names = list(pools)
        self.rng = rng
        self.sync = sync or (lambda: None)
        page_bytes = next(iter(pools.values())).page_bytes
        gen = torch.Generator().manual_seed(seed)
        data = torch.randint(0, 256, (live, page_bytes), dtype=torch.uint8, generator=gen)
        if page_bytes >= ID_BYTES:
            ids = torch.arange(live, dtype=torch.int64).view(-1, 1)
            data[:, :ID_BYTES] = ((ids >> (8 * torch.arange(ID_BYTES))) & 0xFF).to(torch.uint8)
        arr = data.numpy()
        self.crc = [checksum(arr[p]) for p in range(live)]
        self.free: dict[str, set[int]] = {n: set(range(pools[n].num_pages)) for n in self.names}
        self.where: list[tuple[str, int]] = [("", -1)] * live
        self.bad: dict[int, str] = {}
        self.moved = 0
        self.checked = 0
        self.move_s = 0.0
        self.moves_done = 0
        # each page on a random tier at a random page of its pool, written in random order
        home = [rng.choice(self.names) for _ in range(live)]
        for name in self.names:
            mine = [p for p in range(live) if home[p] == name]
            rng.shuffle(mine)
            slots = self._take(name, len(mine))
            for p, s in zip(mine, slots):
                self.where[p] = (name, s)
            if mine:
                pools[name].write_pages(slots, data[mine])
                self.verify(name, mine, slots, "after the first write")

    def _take(self, name: str, n: int) -> list[int]:
        slots = self.rng.sample(sorted(self.free[name]), n)
        self.free[name].difference_update(slots)
        return slots

    def verify(self, name: str, pages: Sequence[int], slots: Sequence[int], when: str) -> None:
        """Read pages back from tier ``name`` and compare each with its checksum."""
        rows = self.pools[name].read_pages(list(slots)).to("cpu").numpy()
        for p, s, row in zip(pages, slots, rows):
            self.checked += 1
            if checksum(row) != self.crc[p] and p not in self.bad:
                holds = _header_id(row)
                what = "" if holds is None else \
                    (f"; it holds page {holds}'s id" if holds != p else "; its id bytes are intact")
                self.bad[p] = f"page {p} at {name}[{s}] {when} (move {self.moves_done}){what}"

    def step(self, k: int) -> None:
        """Move k random pages, in random order, each to a random free page of the other
        tier; check each after its move."""
        chosen = self.rng.sample(range(len(self.where)), k)
        groups = {src: [p for p in chosen if self.where[p][0] == src] for src in self.names}
        for src, group in groups.items():
            if not group:
                continue
            dst = self.names[1] if src == self.names[0] else self.names[0]
            src_slots = [self.where[p][1] for p in group]
            dst_slots = self._take(dst, len(group))
            t0 = time.perf_counter()
            move(self.pools[src], src_slots, self.pools[dst], dst_slots)
            self.sync()
            self.move_s += time.perf_counter() - t0
            self.free[src].update(src_slots)
            for p, s in zip(group, dst_slots):
                self.where[p] = (dst, s)
            self.moved += len(group)
            self.moves_done += len(group)
            self.verify(dst, group, dst_slots, "after its move")

    def sweep(self, when: str) -> None:
        """Check every page where it rests."""
        for name in self.names:
            pages = [p for p, (t, _) in enumerate(self.where) if t == name]
            if pages:
                self.verify(name, pages, [self.where[p][1] for p in pages], when)


# ----------------------------------------------------------------------------- a case
def soak(ctx: RunContext, a: str, b: str, fmt: str) -> dict[str, Any]:
    from kvbench.store import PagePool

    st = settings(ctx)
    spec = PageSpec(ctx.model, get_format(fmt), st["tokens_per_page"], st["layout"])
    live = st["live_pages"]
    tiers: dict[str, Any] = {}
    pools: dict[str, Any] = {}
    config = {"tiers": [a, b], **spec.describe(), **st, "seed": ctx.seed}
    try:
        for name in (a, b):
            tiers[name] = tier_or_skip(name, ctx)
        config["labels"] = [tiers[a].label, tiers[b].label]
        for name in (a, b):
            pools[name] = PagePool(tiers[name], spec, live)
        sync = None
        if any(t.device_memory for t in tiers.values()):
            import torch

            sync = torch.cuda.synchronize
        s = Soak(pools, live, random.Random(ctx.seed), ctx.seed, sync=sync)
        rss: list[int | None] = []
        fds: list[int | None] = []
        rates: list[float] = []
        per_round = [st["pages"] // st["rounds"] + (r < st["pages"] % st["rounds"])
                     for r in range(st["rounds"])]
        for r, n in enumerate(per_round):
            t_moves, moved = s.move_s, s.moved
            left = n
            while left:
                k = min(st["batch"], left, live)
                s.step(k)
                left -= k
            s.sweep(f"at rest after round {r + 1}")
            if s.move_s > t_moves:
                rates.append((s.moved - moved) / (s.move_s - t_moves))
            gc.collect()
            rss.append(rss_bytes())
            fds.append(open_fds())
    finally:
        for p in pools.values():
            p.close()
        for t in tiers.values():
            t.close()
    tol_rss = st["rss_tolerance_mib"] * 2**20
    rss_g, rss_bad = growth(rss, tol_rss)
    fd_g, fd_bad = growth(fds, FD_TOLERANCE)
    problems = []
    notes = [f"{s.moved} page moves {a}<->{b} in {st['rounds']} rounds, {s.checked} checks "
             f"(CRC-32 after every move and of every page at rest after each round), outside the "
             "timed region",
             "not a bandwidth benchmark: pages_per_s counts move calls only (one per batch of "
             f"up to {st['batch']} pages); file pages are mostly in the page cache"]
    if s.bad:
        ids = sorted(s.bad)
        problems.append(f"{len(ids)} of {live} pages corrupted: ids "
                        + ", ".join(map(str, ids[:REASON_IDS])) + (" ..." if len(ids) > REASON_IDS else ""))
        notes.append("corrupted page ids: " + ", ".join(map(str, ids[:NOTE_IDS])))
        notes.extend(s.bad[p] for p in ids[:REASON_IDS])
    if rss_bad:
        problems.append(f"RSS grew {rss_g / 2**20:.1f} MiB from round 1 to round {len(rss)} "
                        f"(tolerance {st['rss_tolerance_mib']:g} MiB)")
    if fd_bad:
        problems.append(f"open file descriptors grew by {fd_g} from round 1 to round {len(fds)} "
                        f"(tolerance {FD_TOLERANCE})")
    if rss_g is None or fd_g is None:
        notes.append("growth needs two rounds and /proc: "
                     + ("one round only" if st["rounds"] < 2 else "a figure is missing"))
    return make_case(
        BENCH_KEY, f"{a}<->{b}/{fmt}", config,
        samples={"pages_per_s": rates,
                 "rss_bytes": [v for v in rss if v is not None],
                 "open_fds": [v for v in fds if v is not None]},
        metrics={"pages_moved": s.moved, "pages_corrupted": len(s.bad),
                 "rss_growth_bytes": rss_g, "fds_growth": fd_g,
                 "pages_checked": s.checked, "bytes_moved": s.moved * spec.page_bytes,
                 "pages_per_s": s.moved / s.move_s if s.move_s else None},
        units={"pages_moved": "pages", "pages_corrupted": "pages", "rss_growth_bytes": "B",
               "fds_growth": "fds", "pages_checked": "pages", "bytes_moved": "B",
               "pages_per_s": "pages/s", "rss_bytes": "B", "open_fds": "fds"},
        notes=notes,
        status="error" if problems else "ok",
        reason="; ".join(problems),
    )


def plan(ctx: RunContext) -> list[Case]:
    st = settings(ctx)  # bad options fail here, before anything runs
    cases = []
    local = [t for t in TIER_NAMES if not tier_class(t).remote]  # a remote tier needs a launched group
    for a, b in itertools.combinations(local, 2):
        for fmt in ctx.formats:
            cases.append(Case(f"{a}<->{b}/{fmt}", {"tiers": [a, b], "format": fmt, **st},
                              lambda c, a=a, b=b, f=fmt: soak(c, a, b, f)))
    return cases


def highlights(doc: dict) -> Highlights | None:
    """Per tier pair and format: pages moved, corrupted, growth, or why not."""
    cases = [c for c in doc["cases"] if c["bench"] == BENCH_KEY]
    if not cases:
        return None
    rows = [[c["name"], c["status"], c["metrics"].get("pages_moved"), c["metrics"].get("pages_corrupted"),
             c["metrics"].get("rss_growth_bytes"), c["metrics"].get("fds_growth"), c.get("reason") or ""]
            for c in cases]
    return Highlights("soak: page integrity at volume",
                      [("tiers/format", ""), ("status", ""), ("pages moved", "pages"),
                       ("corrupted", "pages"), ("RSS growth", "B"), ("fd growth", "fds"), ("reason", "")],
                      rows)


BENCH = Benchmark(
    key=BENCH_KEY,
    description="integrity soak: 10^5 checksummed page moves between tier pairs, RSS and fd growth",
    plan=plan,
    headline="pages_moved",
    headline_unit="pages",
    columns=("pages_corrupted", "rss_growth_bytes", "fds_growth", "pages_per_s"),
    highlights=highlights,
    options={
        "soak.pages": "page moves per tier pair and format, over all rounds (default 20000 quick, 100000 full)",
        "soak.rounds": "rounds; RSS and open fds are sampled after each (default 10)",
        "soak.tokens_per_page": "tokens per page for the soak (default 1: small pages, fast moves)",
        "soak.rss_tolerance_mib": f"RSS growth from round 1 to the last that is an error (default {RSS_TOLERANCE_MIB:g})",
    },
)
