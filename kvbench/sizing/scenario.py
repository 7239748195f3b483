"""Scenario files: load ``configs/scenarios/<name>.yaml`` and validate every input.

A scenario names every input with its unit. Sizes carry the unit in the key's suffix
(``hbm_per_gpu_gb: 288``, ``overhead_per_gpu_gib: 96``, ``central_tib: 293556000``);
any suffix in ``SIZE_UNITS`` is accepted, and the value is kept in bytes. Counts are
plain numbers (``peak_qps``, ``*_tokens_per_request``, ``gpus``). Bad input raises one
``KvbenchError`` line naming the field, e.g.
``scenario foo: field demand.peak_qps must be > 0 (got 0)``.

Tier keys are kvbench's tier names (``hbm``, ``dram``, ``nvme``, ``remote``), the same as
the rest of kvbench; a key under the old sizing names (``ssd``, ``datalake``) is refused
with one line naming its new key.

See docs/sizing.md for every field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvbench.errors import KvbenchError
# SIZE_UNITS, RENAMED_TIERS and renamed_key are part of this module's interface (they
# live in kvbench.sizing.fields, with the field reader)
from kvbench.sizing.fields import RENAMED_TIERS, SIZE_UNITS, Section, renamed_key, to_number  # noqa: F401
from kvbench.spec import KVFormat, ModelSpec, configs_dir, load_model, resolve_format

#: Tiers, by kvbench's tier names (kvbench.tiers; ``remote``: another host's storage,
#: here the central datalake), and how tables label them (the published model's words
#: first: "rack SSD", "datalake").
TIERS = ("hbm", "dram", "nvme", "remote")
TIER_LABELS = {"hbm": "HBM", "dram": "DRAM", "nvme": "rack SSD (NVMe)", "remote": "central datalake (remote)"}
#: the tiers' names in running text ("NVMe too slow")
TIER_SHORT = {"hbm": "HBM", "dram": "DRAM", "nvme": "NVMe", "remote": "remote"}
#: Line items of a sizing, in print order (kvbench.sizing.model builds them).
LINE_IDS = (
    "live_kv_hot", "gpu_overheads", "weights", "unattributed_hbm",
    "live_kv_warm", "reuse_dram", "host_state", "unattributed_dram",
    "live_kv_offload", "reuse_nvme", "rack_ssd_caches", "unattributed_nvme",
    "datalake",
)
#: demand.sweep_scaling: each follower's rules, the default first (SweepScaling).
SCALING_RULES = {
    "rag_tokens": ("fixed", "ratio"),
    "output_tokens": ("fixed", "ratio"),
    "peak_day_tokens": ("per_request", "fixed"),
}
#: unattributed.rule: how the amount a published total holds beyond its listed rows is
#: obtained. "given": the amounts ``unattributed.<tier>_<unit>``. "source_unit_slip": the
#: source's own arithmetic, each tier's listed rows x (2^40/10^12 - 1), recomputed for every
#: sizing (sweeps and measured mode included); see kvbench.sizing.model.
UNATTRIBUTED_RULES = ("given", "source_unit_slip")
#: tiers whose totals may hold an unattributed amount (the datalake is one given row)
UNATTRIBUTED_TIERS = ("hbm", "dram", "nvme")


# ------------------------------------------------------------------------ dataclasses
@dataclass(frozen=True)
class SweepScaling:
    """How other demand inputs follow a swept one (kvbench.sizing.sweep).

    rag_tokens: in an input-token sweep, "fixed" keeps the scenario's RAG count (a one-at-a-
        time sweep holds the other assumptions unchanged); "ratio" keeps its RAG:input ratio.
    output_tokens: in an input-token sweep, "fixed" keeps the count; "ratio" keeps the
        input:output ratio.
    peak_day_tokens: in any sweep that changes tokens/request (input, RAG or output tokens),
        "per_request" scales a *given* peak-day token count by (new tokens/request) /
        (scenario tokens/request); "fixed" keeps it. A derived peak-day count (from QPS)
        always follows tokens/request.
    provenance: why these rules (a quote from the source, or "kvbench assumption").
    """

    rag_tokens: str = "fixed"
    output_tokens: str = "fixed"
    peak_day_tokens: str = "per_request"
    provenance: str = ""


@dataclass(frozen=True)
class Demand:
    """Request demand at peak. Tokens are per request; sequences are counts at once."""

    peak_qps: float
    input_tokens_per_request: float
    rag_tokens_per_request: float
    output_tokens_per_request: float
    ttft_s: float
    decode_tok_s_per_request: float
    #: given values, or None to derive them (see kvbench.sizing.model)
    peak_day_tokens: float | None = None
    active_prefill_sequences: float | None = None
    active_decode_sequences: float | None = None
    #: average load over a peak day relative to peak QPS (1.0: peak QPS all day, as
    #: the reference's "QPS x tokens/req x 86,400" does)
    day_average_over_peak: float = 1.0
    sweep_scaling: SweepScaling = field(default_factory=SweepScaling)

    @property
    def tokens_per_request(self) -> float:
        return self.input_tokens_per_request + self.rag_tokens_per_request + self.output_tokens_per_request

    @property
    def prompt_tokens_per_request(self) -> float:
        return self.input_tokens_per_request + self.rag_tokens_per_request


@dataclass(frozen=True)
class Weights:
    """Model weights resident in HBM, fleet-wide. Exactly one route is set:
    total_bytes (fleet), per_gpu_bytes, or bytes_per_param + gpus_per_replica
    (with params from the model file's ``kvbench.params_total`` or ``params`` here)."""

    total_bytes: float | None = None
    per_gpu_bytes: float | None = None
    bytes_per_param: float | None = None
    gpus_per_replica: float | None = None
    params: float | None = None
    provenance: str = ""


@dataclass(frozen=True)
class Placement:
    hot_window_tokens: float
    live_hbm_fraction: float
    live_dram_fraction: float
    live_nvme_fraction: float
    reuse_retention_fraction: float
    reuse_retention_hours: float
    reuse_dram_fraction: float
    reuse_nvme_fraction: float
    host_state_per_sequence_bytes: float = 0.0
    #: tokens of a reused prefix on a reuse hit (None: the whole prompt, input + RAG)
    reuse_prefix_tokens: float | None = None


@dataclass(frozen=True)
class Fleet:
    gpus: float
    nodes: float
    hbm_per_gpu_bytes: float
    overhead_per_gpu_bytes: float
    rack_ssd_per_node_bytes: float
    dram_per_node_bytes: float | None = None
    provenance: str = ""


@dataclass(frozen=True)
class Scenario:
    """A validated scenario. Sizes in bytes; prices in US$ per GB (GB = 1e9 bytes)."""

    name: str
    description: str
    source: str
    path: str
    model_name: str
    kv_format: str
    demand: Demand
    weights: Weights
    placement: Placement
    fleet: Fleet
    datalake_bytes: float
    datalake_provenance: str
    #: tier -> US$/GB; only tiers given
    prices_usd_per_gb: dict[str, float]
    #: tier -> bytes held by a published total beyond its listed rows (rule "given")
    unattributed_bytes: dict[str, float]
    unattributed_provenance: str
    #: line id or "total_<tier>" -> TiB as published (comparison only, never an input)
    published_tib: dict[str, float]
    #: UNATTRIBUTED_RULES: "given" amounts, or "source_unit_slip" (the source's arithmetic)
    unattributed_rule: str = "given"

    @property
    def model(self) -> ModelSpec:
        return load_model(self.model_name)

    @property
    def fmt(self) -> KVFormat | str:
        """The KV format, or "shipped": each component as the model ships it."""
        return resolve_format(self.kv_format)


# ------------------------------------------------------------------------ validation
def _read_demand(top: Section) -> Demand:
    d = top.sub("demand")
    sc = d.sub("sweep_scaling", required=False)
    scaling = SweepScaling(**{k: sc.choice(k, opts, opts[0]) for k, opts in SCALING_RULES.items()},
                           provenance=sc.text("provenance"))
    sc.done()
    demand = Demand(
        peak_qps=d.number("peak_qps"),
        input_tokens_per_request=d.number("input_tokens_per_request"),
        rag_tokens_per_request=d.number("rag_tokens_per_request", required=False,
                                        strict=False, default=0.0),
        output_tokens_per_request=d.number("output_tokens_per_request"),
        ttft_s=d.number("ttft_s"),
        decode_tok_s_per_request=d.number("decode_tok_s_per_request"),
        peak_day_tokens=d.number("peak_day_tokens", required=False),
        active_prefill_sequences=d.number("active_prefill_sequences", required=False),
        active_decode_sequences=d.number("active_decode_sequences", required=False),
        day_average_over_peak=d.number("day_average_over_peak", required=False,
                                       maximum=1.0, default=1.0),
        sweep_scaling=scaling,
    )
    d.done()
    return demand


def _read_model(top: Section) -> tuple[ModelSpec, Weights]:
    m = top.sub("model")
    model_name = m.text("name", required=True)
    try:
        spec = load_model(model_name)
    except KvbenchError as exc:
        raise m.error("name", f": {exc}") from None
    w = m.sub("weights")
    weights = Weights(
        total_bytes=w.size("total", required=False),
        per_gpu_bytes=w.size("per_gpu", required=False),
        bytes_per_param=w.number("bytes_per_param", required=False),
        gpus_per_replica=w.number("gpus_per_replica", required=False),
        params=w.number("params", required=False),
        provenance=w.text("provenance"),
    )
    w.done()
    routes = [weights.total_bytes is not None, weights.per_gpu_bytes is not None,
              weights.bytes_per_param is not None or weights.gpus_per_replica is not None]
    if sum(routes) != 1:
        raise w.error("", "needs exactly one of total_<unit>, per_gpu_<unit>, "
                          "or bytes_per_param with gpus_per_replica")
    if routes[2]:
        if weights.bytes_per_param is None or weights.gpus_per_replica is None:
            raise w.error("", "needs both bytes_per_param and gpus_per_replica")
        if weights.params is None and to_number(spec.extra.get("params_total")) is None:
            raise w.error("params", f"is missing and model {spec.name} has no kvbench.params_total")
    m.done()
    return spec, weights


def _read_format(top: Section, spec: ModelSpec) -> str:
    k = top.sub("kv")
    fmt = k.text("format", required=True)
    try:  # a kvbench format, or "shipped" when the model declares its shipped formats
        spec.check_format(resolve_format(fmt))
    except KvbenchError as exc:
        raise k.error("format", f": {exc}") from None
    k.done()
    return fmt


def _read_placement(top: Section) -> Placement:
    p = top.sub("placement")
    live = p.split("live_kv_split", ("hbm", "dram", "nvme"))
    reuse = p.split("reuse_split", ("dram", "nvme"))
    placement = Placement(
        hot_window_tokens=p.number("hot_window_tokens", integer=True),
        live_hbm_fraction=live["hbm"], live_dram_fraction=live["dram"], live_nvme_fraction=live["nvme"],
        reuse_retention_fraction=p.number("reuse_retention_fraction", minimum=0.0, strict=False,
                                          maximum=1.0),
        reuse_retention_hours=p.number("reuse_retention_hours"),
        reuse_dram_fraction=reuse["dram"], reuse_nvme_fraction=reuse["nvme"],
        host_state_per_sequence_bytes=p.size("host_state_per_sequence", required=False) or 0.0,
        reuse_prefix_tokens=p.number("reuse_prefix_tokens", required=False),
    )
    p.done()
    return placement


def _read_fleet(top: Section) -> Fleet:
    f = top.sub("fleet")
    fleet = Fleet(
        gpus=f.number("gpus", integer=True),
        nodes=f.number("nodes", integer=True),
        hbm_per_gpu_bytes=f.size("hbm_per_gpu", positive=True),
        overhead_per_gpu_bytes=f.size("overhead_per_gpu"),
        rack_ssd_per_node_bytes=f.size("rack_ssd_per_node"),
        dram_per_node_bytes=f.size("dram_per_node", required=False, positive=True),
        provenance=f.text("provenance"),
    )
    f.done()
    return fleet


def _read_prices(top: Section) -> dict[str, float]:
    pr = top.sub("prices", required=False)
    prices = {}
    for t in TIERS:
        v = pr.number(f"{t}_usd_per_gb", required=False, minimum=0.0, strict=False)
        if v is not None:
            prices[t] = v
    pr.text("provenance")
    pr.done()
    return prices


def _read_unattributed(top: Section) -> tuple[str, dict[str, float], str]:
    """(rule, amounts per tier in bytes, provenance) of the ``unattributed`` section."""
    un = top.sub("unattributed", required=False)
    rule = un.choice("rule", UNATTRIBUTED_RULES, "given")
    amounts = {t: un.size(t, required=False) or 0.0 for t in UNATTRIBUTED_TIERS}
    provenance = un.text("provenance")
    if rule != "given" and any(amounts.values()):
        given = next(t for t, v in amounts.items() if v)
        raise un.error(f"{given}_<unit>", f"gives an amount while unattributed.rule is {rule}, "
                                             "which computes it: give one or the other")
    un.done()
    return rule, amounts, provenance


def _read_published(top: Section) -> dict[str, float]:
    pub = top.sub("published", required=False)
    published: dict[str, float] = {}
    published_keys = {f"{k}_tib" for k in (*LINE_IDS, *(f"total_{t}" for t in TIERS))}
    for key in list(pub.data):
        if not key.endswith("_tib"):
            raise pub.error(key, "must end in _tib (published figures are TiB)")
        if key not in published_keys:
            pub.refuse_renamed(key, published_keys)
            raise pub.error(key, f"names no line item (known: {', '.join(LINE_IDS)}, total_<tier>)")
        published[key[:-4]] = pub.number(key, minimum=0.0, strict=False)
    pub.done()
    return published


def scenario_from_dict(data: Any, name: str, path: str = "<dict>") -> Scenario:
    """Validate a parsed scenario mapping and build a Scenario (sections read in file
    order, so the first bad field is the one reported)."""
    if not isinstance(data, dict):
        raise KvbenchError(f"scenario {name}: expected a mapping at top level")
    top = Section(name, "", data)
    scn_name = top.text("name", default=name) or name
    top.scn = scn_name
    demand = _read_demand(top)
    spec, weights = _read_model(top)
    fmt = _read_format(top, spec)
    placement = _read_placement(top)
    fleet = _read_fleet(top)
    dl = top.sub("datalake", required=False)
    datalake = dl.size("central", required=False) or 0.0
    datalake_prov = dl.text("provenance")
    dl.done()
    prices = _read_prices(top)
    un_rule, unattributed, un_prov = _read_unattributed(top)
    published = _read_published(top)
    scn = Scenario(
        name=scn_name, description=top.text("description"), source=top.text("source"), path=path,
        model_name=spec.name, kv_format=fmt, demand=demand, weights=weights,
        placement=placement, fleet=fleet, datalake_bytes=datalake,
        datalake_provenance=datalake_prov, prices_usd_per_gb=prices,
        unattributed_bytes=unattributed, unattributed_provenance=un_prov,
        published_tib=published, unattributed_rule=un_rule,
    )
    top.done()
    return scn


# ------------------------------------------------------------------------ loading
def scenarios_dir() -> Path:
    return configs_dir() / "scenarios"


def list_scenarios() -> list[str]:
    return sorted(p.stem for p in scenarios_dir().glob("*.yaml"))


def load_scenario(name_or_path: str) -> Scenario:
    """Load ``configs/scenarios/<name>.yaml`` (case-insensitive) or a YAML path."""
    import yaml  # local: keep import cheap

    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        if path.suffix in (".yaml", ".yml") or "/" in name_or_path:
            raise KvbenchError(f"scenario {name_or_path}: no such file")
        known = {n.lower(): n for n in list_scenarios()}
        key = name_or_path.lower()
        if key not in known:
            raise KvbenchError(
                f"unknown scenario {name_or_path!r}; known: {', '.join(sorted(known.values())) or '(none)'}"
            )
        path = scenarios_dir() / f"{known[key]}.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise KvbenchError(f"scenario {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return scenario_from_dict(data, name=path.stem, path=str(path))
