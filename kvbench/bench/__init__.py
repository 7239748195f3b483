"""The benchmark registry.

Each benchmark module (``kvbench/bench/<key>.py``) defines ``BENCH = Benchmark(...)``:
a stable snake_case key, a one-line description, ``available(ctx)`` saying whether it
can run here (and why not), and ``plan(ctx)`` returning its cases. A case is a name, its
resolved configuration and a callable that measures it and returns a result case dict
(``kvbench.results.make_case``), or raises ``Skip(reason)``. A benchmark also declares
how its results are shown: its headline metric, further table columns, plots and the
highlights of a report's headline section (``kvbench report`` reads these; nothing
there knows a benchmark by name). Adding a benchmark = its module + one line in
``BENCH_MODULES``. The runner owns progress, error capture, the result file and the
summary table.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kvbench.errors import Skip  # noqa: F401 - benchmarks raise it as kvbench.bench.Skip

#: Registry keys in the order a full run takes them.
BENCH_MODULES = ("roundtrip", "transfer", "accuracy", "decode", "prefix", "soak", "e2e", "remote")

#: What `kvbench run` runs with no --bench.
DEFAULT_BENCHES = ("roundtrip", "transfer", "accuracy", "decode", "prefix")




@dataclass
class RunContext:
    """What every benchmark sees: the machine, the chosen shapes and run options.

    cuda: a CUDA device is present and usable.
    quick: small sizes and few samples (CI, a first look).
    model / formats / tokens_per_page / layouts: the page shapes to use.
    nvme_dir: folder for NVMe-backed files (the caller owns its cleanup).
    options: benchmark-specific settings (from --set key=value), strings.
    environment: kvbench.env.collect_environment() output, read once.
    formats_given: the formats were chosen (--format), not the defaults (a benchmark
    that is cheap in every format, accuracy, then covers them all).
    """

    cuda: bool
    quick: bool
    model: Any
    formats: list[str]
    tokens_per_page: int
    layouts: list[str]
    nvme_dir: Path
    warmup: int
    samples: int
    seed: int = 0
    options: dict[str, str] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    formats_given: bool = True
    #: results of cases already run in this run (ceilings, earlier benches)
    done: list[dict[str, Any]] = field(default_factory=list)
    #: set by the runner when a CUDA error left the context unusable (later cases skip)
    cuda_failed: str = ""

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    def opt_list(self, key: str, default: list[Any], cast: Callable[[str], Any] = int) -> list[Any]:
        """A comma-separated option (``--set key=a,b,c``); each item cast, positive if a
        number; one-line error naming the option otherwise."""
        from kvbench.errors import KvbenchError

        if key not in self.options:
            return list(default)
        out = []
        for item in self.options[key].split(","):
            item = item.strip()
            if not item:
                continue
            try:
                v = cast(item)
            except ValueError:
                raise KvbenchError(f"--set {key}: {item!r} is not a valid value") from None
            if any(isinstance(x, (int, float)) and x <= 0 for x in (v if isinstance(v, tuple) else (v,))):
                raise KvbenchError(f"--set {key}: {item!r} must be positive")
            out.append(v)
        if not out:
            raise KvbenchError(f"--set {key}: no values given")
        return out

    def opt_seconds(self, key: str, default: float) -> float:
        """A time budget option (``--set key=SECONDS``): a positive number of seconds."""
        from kvbench.errors import KvbenchError

        v = self.opt(key, default, float)
        if not v > 0:
            raise KvbenchError(f"--set {key}={self.options.get(key)}: must be a positive number of seconds")
        return v

    def opt(self, key: str, default: Any, cast: Callable[[str], Any] = str) -> Any:
        from kvbench.errors import KvbenchError

        if key not in self.options:
            return default
        try:
            return cast(self.options[key])
        except ValueError:
            raise KvbenchError(f"--set {key}={self.options[key]!r}: not a valid value") from None

    def opt_int(self, key: str, default: int, minimum: int = 1, maximum: int | None = None,
                why: str = "") -> int:
        """An integer option (``--set key=N``) with ``minimum <= N <= maximum``; a one-line
        error naming the option otherwise (``why`` says where the maximum comes from)."""
        from kvbench.errors import KvbenchError

        if key not in self.options:
            return default
        text = self.options[key]
        try:
            v = int(text)
        except ValueError:
            raise KvbenchError(f"--set {key}={text!r}: not an integer") from None
        if v < minimum:
            raise KvbenchError(f"--set {key}={text}: must be "
                               + ("positive" if minimum == 1 else f"at least {minimum}"))
        if maximum is not None and v > maximum:
            raise KvbenchError(f"--set {key}={text}: must be at most {maximum:,}"
                               + (f" ({why})" if why else ""))
        return v

    def opt_size(self, key: str, default: int, max_bytes: int | None = None, where: str = "") -> int:
        """A byte size option (``--set key=64MiB``, see kvbench.units.parse_size): positive
        and at most ``max_bytes`` (what the tier named by ``where`` can hold)."""
        from kvbench.errors import KvbenchError
        from kvbench.units import GB, parse_size

        if key not in self.options:
            return default
        text = self.options[key]
        try:
            v = parse_size(text)
        except ValueError as exc:
            raise KvbenchError(f"--set {key}={text}: {exc}") from None
        if max_bytes is not None and v > max_bytes:
            raise KvbenchError(f"--set {key}={text}: {v:,} B is more than {where or 'the tier'} "
                               f"can hold ({max_bytes / GB:,.1f} GB)")
        return v

    def host_memory_bytes(self) -> int | None:
        """Total host memory in bytes (what the dram tier can hold at most), or None."""
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None

    def disk_free_bytes(self) -> int | None:
        """Free bytes on the disk under nvme_dir (what the nvme tier can hold), or None."""
        import shutil

        if not self.nvme_dir:
            return None
        try:
            return shutil.disk_usage(self.nvme_dir).free
        except OSError:
            return None


@dataclass
class Case:
    name: str
    config: dict[str, Any]
    run: Callable[[RunContext], dict[str, Any]]
    #: bytes the case holds at once, by kind ("device", "pinned", "pageable", "file":
    #: kvbench.footprint), or None when it holds little; the runner checks it against
    #: what the tiers have free before ``run`` and records a skip with the numbers
    footprint: Callable[[RunContext], dict[str, int]] | None = None


@dataclass(frozen=True)
class Plot:
    """A plot a benchmark draws from a result document: ``draw(doc)`` returns
    (matplotlib Figure, caption saying what is drawn) or None when the document has
    no ok case it draws. ``kvbench report`` titles it with the run and writes
    ``file`` (PNG). Draw with ``kvbench.plotkit`` (shared colours, log axes)."""

    file: str
    draw: Callable[[dict[str, Any]], tuple[Any, str] | None]


@dataclass(frozen=True)
class Highlights:
    """What a benchmark puts in the headline section of a report: a small table of
    its best or most telling figures (values unformatted; units per column)."""

    title: str
    columns: list[tuple[str, str]]  # (column name, unit: "" for text)
    rows: list[list[Any]]


@dataclass
class Benchmark:
    """A benchmark: what it measures (plan, available, options) and how its results
    are shown (headline metric, further table columns, plots, headline highlights)."""

    key: str
    description: str
    plan: Callable[[RunContext], list[Case]]
    available: Callable[[RunContext], tuple[bool, str]] = lambda ctx: (True, "")
    #: metric shown in the summary table, and how to print it
    headline: str = ""
    headline_unit: str = ""
    #: ``--set`` options this benchmark reads: full key -> one-line description
    options: dict[str, str] = field(default_factory=dict)
    #: checks its ``--set`` values before anything runs or is launched (raises a
    #: one-line KvbenchError for a bad one); None: values are checked when planned
    check: Callable[[dict[str, str]], None] | None = None
    #: further metrics worth a column in report tables (shown when a case has them)
    columns: tuple[str, ...] = ()
    #: plots of its results (kvbench report --plot-dir / --html)
    plots: tuple[Plot, ...] = ()
    #: the report's headline section for this benchmark: doc -> Highlights or None
    highlights: Callable[[dict[str, Any]], "Highlights | None"] | None = None
    #: runs on rank 0 of a multi-rank launch while the other ranks serve its remote
    #: tier (kvbench.launch); only such benchmarks run in one
    distributed: bool = False
    #: runs alone and in a multi-rank launch as well (on rank 0, beside the benchmarks
    #: that need the group), where its cases with the remote tier can run; alone they skip
    #: with the tier's reason
    also_distributed: bool = False


def registry() -> dict[str, Benchmark]:
    """All benchmarks, keyed by their stable key (modules imported on demand)."""
    out: dict[str, Benchmark] = {}
    for key in BENCH_MODULES:
        try:
            mod = importlib.import_module(f"kvbench.bench.{key}")
        except ModuleNotFoundError as exc:
            if exc.name == f"kvbench.bench.{key}":
                continue  # not built yet
            raise
        out[key] = mod.BENCH
    return out


def check_options(options: dict[str, str], benches: list[Benchmark]) -> None:
    """Refuse a --set key no selected benchmark reads (a typo would be silently ignored),
    and a value a benchmark's ``check`` refuses."""
    from kvbench.errors import KvbenchError

    known = {k for b in benches for k in b.options}
    for key in options:
        if key not in known:
            raise KvbenchError(f"--set {key}: no selected benchmark reads it; known: "
                               f"{', '.join(sorted(known)) or 'none'} (see 'kvbench run --list')")
    for b in benches:
        if b.check is not None:
            b.check(options)


def match_keys(available: list[str], wanted: list[str], what: str, where: str = "") -> list[str]:
    """Keys by exact name or unique prefix, in the order asked, each once; a one-line
    KvbenchError for an unknown or ambiguous one (``what`` names the kind of key)."""
    from kvbench.errors import KvbenchError

    out: list[str] = []
    for k in wanted:
        matches = [a for a in available if a == k] or [a for a in available if a.startswith(k)]
        if len(matches) != 1:
            how = "ambiguous" if matches else "unknown"
            raise KvbenchError(f"{how} {what} {k!r}{where}; known: {', '.join(available) or 'none'}")
        if matches[0] not in out:
            out.append(matches[0])
    return out


def select(keys: list[str] | None) -> list[Benchmark]:
    """Benchmarks by key or unique prefix; default: DEFAULT_BENCHES that exist."""
    reg = registry()
    if not keys:
        return [reg[k] for k in DEFAULT_BENCHES if k in reg]
    return [reg[k] for k in match_keys(list(reg), keys, "benchmark")]


def tier_or_skip(name: str, ctx: RunContext) -> Any:
    """The named tier, or Skip(reason) when it cannot be used on this machine."""
    from kvbench.tiers import make_tier

    tier = make_tier(name, ctx.nvme_dir)
    ok, why = tier.available()
    if not ok:
        raise Skip(f"tier {name} unavailable: {why}")
    return tier


def odirect_tier_or_skip(ctx: RunContext) -> Any:
    """The nvme tier with O_DIRECT working in its folder, or Skip(reason)."""
    tier = tier_or_skip("nvme", ctx)
    ok, why = tier.odirect_status()
    if not ok:
        tier.close()
        raise Skip(f"O_DIRECT unavailable: {why}")
    return tier
