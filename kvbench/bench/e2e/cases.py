"""Which caches the e2e benchmark times: the one list (``cache_cases``) and what each
needs before it can run here (``unmet``). Adding a cache = one entry in
``cache_cases`` (and its construction in ``kvbench.hf.e2e.make_cache_factory``)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from kvbench.bench import RunContext
from kvbench.bench.e2e.settings import QUANT_BACKENDS

#: the decode benchmark's placement whose KV path a kvbench tier's pages take, by the
#: tier's kind (kvbench.tiers.base.TIER_KINDS) and whether the model runs on CUDA:
#: PagedCache on a host tier reads its pages on the host and copies them to the device
#: per layer, as decode's dram_prefetch does; without CUDA decode's CPU reference
#: reads pageable DRAM ("dram") or an NVMe file ("nvme")
DECODE_PLACEMENT = {("device", True): "hbm", ("host", True): "dram_prefetch",
                    ("host", False): "dram", ("file", True): "nvme", ("file", False): "nvme"}


@dataclass(frozen=True)
class CacheCase:
    """One cache the model generates with.

    name: the case name. kind: ``dynamic`` (DynamicCache, the reference),
    ``dynamic_offload``, ``quantized/<backend>`` or ``kvbench`` (PagedCache of ``fmt`` on
    ``tier``, or a chain by age: the newest ``e2e.hot_window`` tokens on ``hot_tier``,
    the next ``e2e.warm_window`` on ``warm_tier`` when there is one, the rest on
    ``tier``). kv_format: the kvbench format its K/V are held in ('' when none is:
    QuantizedCache's own int formats). decode_placement: the decode benchmark's
    placement whose figures predict its KV reads ('' none)."""

    name: str
    kind: str
    fmt: str = ""
    tier: str = ""
    kv_format: str = ""
    decode_placement: str = ""
    #: a two-tier placement's hot tier ('' : every page on ``tier``), the window from
    #: the settings' hot_window
    hot_tier: str = ""
    #: a three-tier chain's middle tier ('' : none), the window from warm_window
    warm_tier: str = ""

    def placement(self, hot_window: int, warm_window: int) -> list[tuple[str, int]]:
        """The PagedCache placement: (tier, window tokens), hottest first."""
        chain = [(self.hot_tier, hot_window)] if self.hot_tier else []
        chain += [(self.warm_tier, warm_window)] if self.warm_tier else []
        return chain + [(self.tier, 0)]

    @property
    def is_reference(self) -> bool:
        return self.kind == "dynamic"


def cache_cases(ctx: RunContext) -> list[CacheCase]:
    """Every cache of a run, in the order they run: the reference first."""
    from kvbench.tiers import TIER_NAMES  # every registered tier, none known here by name

    dense = "hbm" if ctx.cuda else "dram"  # where DynamicCache's K/V live: the model's device
    out = [CacheCase("dynamic", "dynamic", kv_format="fp16", decode_placement=dense),
           CacheCase("dynamic_offload", "dynamic_offload", kv_format="fp16", decode_placement="dram_prefetch")]
    out += [CacheCase(f"quantized/{b}", f"quantized/{b}") for b in QUANT_BACKENDS]
    out += [CacheCase(f"kvbench/{t}/{f}", "kvbench", fmt=f, tier=t, kv_format=f, decode_placement=_placement(t, ctx))
            for t in _local(TIER_NAMES) for f in ctx.formats]
    out += [CacheCase(f"kvbench/{hot}+{cold}/{f}", "kvbench", fmt=f, tier=cold, kv_format=f,
                      decode_placement=_placement(cold, ctx), hot_tier=hot)
            for hot, cold in two_tier_placements() for f in ctx.formats]
    out += [CacheCase(f"kvbench/{hot}+{warm}+{cold}/{f}", "kvbench", fmt=f, tier=cold, kv_format=f,
                      decode_placement=_placement(cold, ctx), hot_tier=hot, warm_tier=warm)
            for hot, warm, cold in three_tier_placements() for f in ctx.formats]
    return out


def _local(names: Any) -> list[str]:
    """The tiers e2e can page on: not a remote one (its pool lives on a peer rank of a
    multi-rank launch, and e2e is not a distributed benchmark)."""
    from kvbench.tiers import tier_class

    return [n for n in names if not tier_class(n).remote]


def three_tier_placements() -> list[tuple[str, str, str]]:
    """(hot, warm, cold) chains: device memory, then host memory, then a file-backed
    tier, in registry order (hbm+dram+nvme)."""
    from kvbench.tiers import TIER_NAMES, tier_class

    by_kind = {k: [n for n in TIER_NAMES if tier_class(n).kind() == k and not tier_class(n).remote]
               for k in ("device", "host", "file")}
    return [(h, w, c) for h in by_kind["device"] for w in by_kind["host"] for c in by_kind["file"]]


def two_tier_placements() -> list[tuple[str, str]]:
    """(hot, cold) tier pairs of a hot-window placement: a memory tier (device or host
    memory) for the recent tokens, any later-registered tier that is not device memory
    for the rest (hbm+dram, hbm+nvme, dram+nvme, ...)."""
    from kvbench.tiers import TIER_NAMES, tier_class

    names = _local(TIER_NAMES)
    memory = [n for n in names if tier_class(n).kind() in ("device", "host")]
    return [(hot, cold) for hot in memory for cold in names[names.index(hot) + 1:]
            if tier_class(cold).kind() != "device"]


def _placement(tier: str, ctx: RunContext) -> str:
    """The decode placement of a tier's pages ('' for a remote tier: decode reads none)."""
    from kvbench.tiers import tier_class

    cls = tier_class(tier)
    return "" if cls.remote else DECODE_PLACEMENT.get((cls.kind(), ctx.cuda), "")


def unmet(ctx: RunContext, cc: CacheCase) -> str | None:
    """Why ``cc`` cannot run here (a skip's reason), or None. Opens and closes a
    kvbench tier to ask it."""
    if cc.kind == "dynamic_offload" and not ctx.cuda:
        return ("DynamicCache(offloading=True) offloads layers from the accelerator to host "
                "memory: needs CUDA")
    if cc.kind.startswith("quantized/"):
        backend = cc.kind.split("/", 1)[1]
        mod = QUANT_BACKENDS[backend]
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"QuantizedCache backend {backend} needs the {mod} package, not installed"
    if cc.kind == "kvbench":
        from kvbench.tiers import make_tier

        for name in filter(None, (cc.hot_tier, cc.warm_tier, cc.tier)):
            tier = make_tier(name, ctx.nvme_dir)
            try:
                ok, why = tier.available()
            finally:
                tier.close()
            if not ok:
                return f"tier {name} unavailable: {why}"
    return None
