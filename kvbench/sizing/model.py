"""The sizing arithmetic: a Scenario in, tiered line items with their formulas out.

The arithmetic is the published model's (docs/sizing.md, "How the model works"):

    tokens/request      = input + RAG + output
    peak-day tokens     = given, else QPS x tokens/request x 86,400 s x day_average_over_peak
    prefill sequences   = given, else QPS x TTFT                       (Little's law)
    decode sequences    = given, else QPS x output tokens / decode tok/s per request
    live KV             = (prefill + decode) x min(hot window, tokens/request) x KV B/token
    reuse KV            = peak-day tokens x retention hours / 24 h x retention fraction x KV B/token
    hbm    = live x HBM share + GPUs x overhead/GPU + weights + unattributed HBM
    dram   = live x DRAM share + reuse x DRAM share + host state + unattributed DRAM
    nvme   = live x NVMe share + reuse x NVMe share + nodes x rack SSD/node + unattributed NVMe
    remote = the central datalake, given
    unattributed = given, or (unattributed.rule: source_unit_slip) the tier's listed rows x
                   (2^40/10^12 - 1): the source's totals are its TiB rows x 2^40/10^12
    corrected total = the tier's rows without the source's unit slip

(tiers by kvbench's names: ``nvme`` is the published model's rack SSD, ``remote`` its
datalake)

Every quantity and line item carries a formula string with the numbers substituted, so
``--explain`` shows where each figure comes from. Sizes are bytes; TiB = 2**40 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvbench.sizing.numbers import GB, TIB_OVER_TB, num, tib
from kvbench.sizing.scenario import TIERS, UNATTRIBUTED_TIERS, Scenario

SECONDS_PER_DAY = 86_400  # the reference's "x 86,400"
HOURS_PER_DAY = 24


@dataclass(frozen=True)
class Quantity:
    """A derived or given input: value in ``unit``, how it was obtained, and its formula."""

    id: str
    label: str
    value: float
    unit: str
    source: str  # "given", "derived", "model" (from configs/models + format), "measured"
    formula: str


@dataclass(frozen=True)
class LineItem:
    """One row of a tier. ``source_only``: a figure of the source's arithmetic that holds no
    bytes (its unit slip): in the total as the source computed it, not in the corrected one."""

    id: str
    tier: str
    label: str
    bytes: float
    formula: str
    provenance: str = ""
    source_only: bool = False

    @property
    def tib(self) -> float:
        return tib(self.bytes)


@dataclass(frozen=True)
class Sizing:
    """Line items and tier totals (bytes). ``totals_bytes`` sums every line, so where the
    scenario reproduces the source's arithmetic (unattributed.rule: source_unit_slip) it is
    the total as the source computed it; ``corrected_totals_bytes`` leaves the source's unit
    slip out. Without such a rule the two are equal."""

    scenario: Scenario
    quantities: dict[str, Quantity]
    items: tuple[LineItem, ...]
    totals_bytes: dict[str, float]
    costs_usd: dict[str, float] = field(default_factory=dict)

    def q(self, key: str, default: float | None = None) -> float:
        """A quantity's value; ``default`` when it is absent (if one is given)."""
        if key not in self.quantities and default is not None:
            return default
        return self.quantities[key].value

    def sequence_kv_bytes(self, tokens: float) -> float:
        """KV bytes of one sequence of ``tokens`` tokens at this sizing's bytes/token."""
        return tokens * self.q("kv_bytes_per_token") + self.q("kv_bytes_per_sequence_constant", 0.0)

    def item(self, key: str) -> LineItem:
        for it in self.items:
            if it.id == key:
                return it
        raise KeyError(key)

    def tier_items(self, tier: str) -> list[LineItem]:
        return [it for it in self.items if it.tier == tier]

    @property
    def totals_tib(self) -> dict[str, float]:
        return {t: tib(b) for t, b in self.totals_bytes.items()}

    @property
    def corrected_totals_bytes(self) -> dict[str, float]:
        """Tier totals without the source's unit slip: the bytes the listed rows hold."""
        return {t: sum(it.bytes for it in self.items if it.tier == t and not it.source_only)
                for t in self.totals_bytes}

    @property
    def corrected_totals_tib(self) -> dict[str, float]:
        return {t: tib(b) for t, b in self.corrected_totals_bytes.items()}

    @property
    def corrected_costs_usd(self) -> dict[str, float]:
        """Cost per priced tier of its corrected total (US$, GB = 1e9 B)."""
        prices = self.scenario.prices_usd_per_gb
        return {t: self.corrected_totals_bytes[t] / GB * prices[t] for t in self.costs_usd}

    @property
    def has_source_slip(self) -> bool:
        """True when some total is the source's (its unit slip included) and differs from
        the corrected one."""
        return any(it.source_only and it.bytes for it in self.items)


def weights_bytes(scn: Scenario) -> Quantity:
    """Fleet-wide weights resident in HBM, from whichever route the scenario gives."""
    w, gpus = scn.weights, scn.fleet.gpus
    if w.total_bytes is not None:
        return Quantity("weights_bytes", "weights in HBM, fleet", w.total_bytes, "B", "given",
                        f"given: {num(tib(w.total_bytes))} TiB")
    if w.per_gpu_bytes is not None:
        v = gpus * w.per_gpu_bytes
        return Quantity("weights_bytes", "weights in HBM, fleet", v, "B", "given",
                        f"GPUs x weights/GPU = {num(gpus)} x {num(w.per_gpu_bytes)} B")
    params = w.params if w.params is not None else float(scn.model.extra["params_total"])
    src = "scenario" if w.params is not None else f"configs/models/{scn.model_name} kvbench.params_total"
    v = gpus * params * w.bytes_per_param / w.gpus_per_replica
    return Quantity(
        "weights_bytes", "weights in HBM, fleet", v, "B", "derived",
        f"GPUs x params x B/param / GPUs per replica = {num(gpus)} x {num(params)} ({src}) x "
        f"{num(w.bytes_per_param)} B / {num(w.gpus_per_replica)}",
    )


def _kv_formula(scn: Scenario, spec_bpt: float) -> str:
    """How the model's bytes per token are obtained, with the numbers (kvbench.spec)."""
    model, fmt = scn.model, scn.fmt
    comps = model.components
    fname = fmt if isinstance(fmt, str) else fmt.name
    if len(comps) == 1 and comps[0].grows and comps[0].tokens_per_entry == 1 and not comps[0].fixed:
        c, codec = comps[0], model.codec(comps[0], fmt)
        return (f"{model.full_layers} layers x {model.kv_factor} (K,V) x {model.kv_heads} KV heads x "
                f"{codec.vector_bytes(model.head_dim)} B per {model.head_dim}-element vector "
                f"({fname}, in-page scales included) = {num(spec_bpt)} B")
    tokens = int(scn.demand.tokens_per_request)
    parts = []
    for c in comps:
        if not c.grows:
            continue
        b = c.entry_bytes(model.codec(c, fmt))
        entries = f"{num(c.entries(tokens))} entries" if c.tokens_per_entry > 1 else "1 per token"
        parts.append(f"{c.name}: {len(c.layers)} layers x {b} B ({entries})")
    at = f" at {num(tokens)} tokens/request" if any(c.tokens_per_entry > 1 for c in comps if c.grows) else ""
    return (f"{'; '.join(parts)} ({fname}, in-page scales included){at} = {num(spec_bpt)} B "
            f"(kvbench info --model {model.name} --context {num(tokens)} shows each component)")


def _kv_per_token(scn: Scenario, put, kv_bytes_per_token: float | None,
                  kv_source: str) -> tuple[float, float]:
    """KV bytes per token and the per-sequence constant (sliding windows, fixed state; B).
    Bytes per token are exact at the scenario's context, tokens/request: a component with
    one entry per m tokens holds floor(tokens / m) entries."""
    model, fmt = scn.model, scn.fmt
    spec_bpt = model.kv_bytes_per_token_at(scn.demand.tokens_per_request, fmt)
    if kv_bytes_per_token is None:
        bpt = put(Quantity("kv_bytes_per_token", "KV bytes / token", spec_bpt, "B", "model",
                           _kv_formula(scn, spec_bpt)))
    else:
        bpt = put(Quantity("kv_bytes_per_token", "KV bytes / token", kv_bytes_per_token, "B",
                           "measured", f"{num(kv_bytes_per_token)} B ({kv_source})"))
    seq_const = model.kv_bytes_per_sequence_constant(fmt) * (bpt / spec_bpt)
    if seq_const:
        held = [f"{c.name} ({len(c.layers)} layers x {c.max_entries} {'rows' if c.constant else 'entries'})"
                for c in model.components if not c.grows]
        put(Quantity("kv_bytes_per_sequence_constant", "KV bytes / sequence (windows, state)",
                     seq_const, "B", "model",
                     f"{' + '.join(held)} x per-entry bytes = {num(seq_const)} B"))
    return bpt, seq_const


def _given_or(put, key: str, label: str, given: float | None, unit: str, derived: float,
              formula: str) -> float:
    """A quantity that is given when the scenario gives it, else derived by ``formula``."""
    if given is not None:
        return put(Quantity(key, label, given, unit, "given", f"given: {num(given)}"))
    return put(Quantity(key, label, derived, unit, "derived", formula))


def _demand(scn: Scenario, put) -> None:
    """Tokens per request, peak-day tokens and active sequences (Little's law)."""
    d = scn.demand
    tpr = put(Quantity(
        "tokens_per_request", "tokens / request", d.tokens_per_request, "tok", "derived",
        f"input + RAG + output = {num(d.input_tokens_per_request)} + "
        f"{num(d.rag_tokens_per_request)} + {num(d.output_tokens_per_request)}",
    ))
    qps_day = d.peak_qps * tpr * SECONDS_PER_DAY * d.day_average_over_peak
    avg = f" x {num(d.day_average_over_peak)} (day average / peak)" if d.day_average_over_peak != 1 else ""
    put(Quantity("peak_day_tokens_from_qps", "peak-day tokens (from QPS)", qps_day, "tok", "derived",
                 f"QPS x tokens/request x 86,400 s = {num(d.peak_qps)} x {num(tpr)} x 86,400{avg}"))
    _given_or(put, "peak_day_tokens", "peak-day tokens", d.peak_day_tokens, "tok", qps_day,
              "= peak-day tokens (from QPS)")
    pre = _given_or(put, "active_prefill_sequences", "active prefill sequences",
                    d.active_prefill_sequences, "seq", d.peak_qps * d.ttft_s,
                    f"QPS x TTFT = {num(d.peak_qps)} x {num(d.ttft_s)} s")
    dec = _given_or(put, "active_decode_sequences", "active decode sequences",
                    d.active_decode_sequences, "seq",
                    d.peak_qps * d.output_tokens_per_request / d.decode_tok_s_per_request,
                    f"QPS x output tokens / decode tok/s = {num(d.peak_qps)} x "
                    f"{num(d.output_tokens_per_request)} / {num(d.decode_tok_s_per_request)}")
    put(Quantity("active_sequences", "active sequences", pre + dec, "seq", "derived",
                 f"prefill + decode = {num(pre)} + {num(dec)}"))


def _kv_sizes(scn: Scenario, Q: dict[str, Quantity], put, bpt: float, seq_const: float) -> None:
    """Live KV (a hot window per active sequence) and the reuse cache, in bytes."""
    p = scn.placement
    act, tpr, day = Q["active_sequences"].value, Q["tokens_per_request"].value, Q["peak_day_tokens"].value
    live_tok = put(Quantity(
        "live_tokens_per_sequence", "live KV tokens / sequence",
        min(p.hot_window_tokens, tpr), "tok", "derived",
        f"min(hot window, tokens/request) = min({num(p.hot_window_tokens)}, {num(tpr)})",
    ))
    const_txt = f" + {num(act)} x {num(seq_const)} B" if seq_const else ""
    put(Quantity(
        "live_kv_bytes", "live KV", act * (live_tok * bpt + seq_const), "B", "derived",
        f"active sequences x live tokens x KV B/token = {num(act)} x {num(live_tok)} x "
        f"{num(bpt)} B{const_txt}",
    ))
    hours = p.reuse_retention_hours / HOURS_PER_DAY
    put(Quantity(
        "reuse_kv_bytes", "KV reuse cache", day * hours * p.reuse_retention_fraction * bpt, "B",
        "derived",
        f"peak-day tokens x retention h / 24 h x retained fraction x KV B/token = {num(day)} x "
        f"{num(p.reuse_retention_hours)}/24 x {num(p.reuse_retention_fraction)} x {num(bpt)} B",
    ))


def _listed_rows(scn: Scenario, Q: dict[str, Quantity]) -> list[LineItem]:
    """The line items the source lists (every line but the unattributed ones)."""
    p, fl = scn.placement, scn.fleet
    live, reuse, act = Q["live_kv_bytes"].value, Q["reuse_kv_bytes"].value, Q["active_sequences"].value

    def share(whole: str, frac: float, what: str) -> str:
        q = Q[whole + "_bytes"]
        return f"{q.label} x {what} share = {num(round(tib(q.value), 2))} TiB x {num(frac)}"

    return [
        LineItem("live_kv_hot", "hbm", "live KV (hot)", live * p.live_hbm_fraction,
                 share("live_kv", p.live_hbm_fraction, "HBM")),
        LineItem("gpu_overheads", "hbm", "GPU overheads", fl.gpus * fl.overhead_per_gpu_bytes,
                 f"GPUs x overhead/GPU = {num(fl.gpus)} x {num(fl.overhead_per_gpu_bytes / 2**30)} GiB"),
        LineItem("weights", "hbm", "weights", Q["weights_bytes"].value, Q["weights_bytes"].formula,
                 scn.weights.provenance),
        LineItem("live_kv_warm", "dram", "live KV (warm)", live * p.live_dram_fraction,
                 share("live_kv", p.live_dram_fraction, "DRAM")),
        LineItem("reuse_dram", "dram", "KV reuse cache", reuse * p.reuse_dram_fraction,
                 share("reuse_kv", p.reuse_dram_fraction, "DRAM")),
        LineItem("host_state", "dram", "host buffers/state", act * p.host_state_per_sequence_bytes,
                 f"active sequences x host state/sequence = {num(act)} x "
                 f"{num(p.host_state_per_sequence_bytes)} B"),
        LineItem("live_kv_offload", "nvme", "live KV (offload)", live * p.live_nvme_fraction,
                 share("live_kv", p.live_nvme_fraction, "NVMe")),
        LineItem("reuse_nvme", "nvme", "KV reuse cache", reuse * p.reuse_nvme_fraction,
                 share("reuse_kv", p.reuse_nvme_fraction, "NVMe")),
        LineItem("rack_ssd_caches", "nvme", "local rack SSD caches/logs",
                 fl.nodes * fl.rack_ssd_per_node_bytes,
                 f"nodes x rack SSD/node = {num(fl.nodes)} x {num(fl.rack_ssd_per_node_bytes / 1e12)} TB"),
        LineItem("datalake", "remote", "RAG + logs + caches (central)", scn.datalake_bytes,
                 f"given: {num(tib(scn.datalake_bytes))} TiB", scn.datalake_provenance),
    ]


def unattributed_item(scn: Scenario, tier: str, listed_bytes: float) -> LineItem:
    """What a published total holds beyond the tier's listed rows (``listed_bytes``).

    Rule "given": the scenario's amount, a storage figure. Rule "source_unit_slip": the
    source's arithmetic, listed rows x (2^40/10^12 - 1), so that rows + this line is the
    total as the source computed it (its rows, in TiB, converted to TB and printed as TiB);
    the line holds no bytes (``source_only``) and the corrected total leaves it out."""
    if scn.unattributed_rule == "source_unit_slip":
        b = listed_bytes * (TIB_OVER_TB - 1)
        return LineItem(f"unattributed_{tier}", tier, "source's unit slip (not storage)", b,
                        f"source's arithmetic: listed rows x (2^40/10^12 - 1) = "
                        f"{num(round(tib(listed_bytes), 2))} TiB x {TIB_OVER_TB - 1:.6f}",
                        scn.unattributed_provenance, source_only=True)
    b = scn.unattributed_bytes[tier]
    return LineItem(f"unattributed_{tier}", tier, "unattributed in source", b,
                    f"given: {num(tib(b))} TiB", scn.unattributed_provenance)


def compute(scn: Scenario, *, kv_bytes_per_token: float | None = None,
            kv_source: str = "") -> Sizing:
    """Size every tier for ``scn``. ``kv_bytes_per_token`` replaces the model/format value
    (measured mode); ``kv_source`` says where it came from."""
    Q: dict[str, Quantity] = {}

    def put(q: Quantity) -> float:
        Q[q.id] = q
        return q.value

    bpt, seq_const = _kv_per_token(scn, put, kv_bytes_per_token, kv_source)
    _demand(scn, put)
    _kv_sizes(scn, Q, put, bpt, seq_const)
    put(weights_bytes(scn))
    listed = _listed_rows(scn, Q)
    items = []
    for tier in TIERS:  # in LINE_IDS order: a tier's listed rows, then its unattributed line
        rows = [it for it in listed if it.tier == tier]
        items += rows
        if tier in UNATTRIBUTED_TIERS:
            items.append(unattributed_item(scn, tier, sum(it.bytes for it in rows)))
    totals = {t: sum(it.bytes for it in items if it.tier == t) for t in TIERS}
    costs = {t: totals[t] / GB * price for t, price in scn.prices_usd_per_gb.items()}
    return Sizing(scn, Q, tuple(items), totals, costs)


def hbm_left_per_gpu(sz: Sizing) -> float:
    """HBM per GPU after overheads and the fleet's weights spread over its GPUs (bytes;
    negative when weights and overheads alone exceed it)."""
    fl = sz.scenario.fleet
    return fl.hbm_per_gpu_bytes - fl.overhead_per_gpu_bytes - sz.q("weights_bytes") / fl.gpus


def hot_window_fit_tokens(sz: Sizing) -> float:
    """The largest hot window (tokens) whose HBM share fits in the HBM left per GPU:
    left x GPUs / (active sequences x KV B/token x HBM share). 0 when nothing is left;
    inf when no live KV is placed in HBM."""
    scn = sz.scenario
    per_token = sz.q("active_sequences") * sz.q("kv_bytes_per_token") * scn.placement.live_hbm_fraction
    if per_token <= 0:
        return float("inf")
    return max(hbm_left_per_gpu(sz), 0.0) * scn.fleet.gpus / per_token


#: A reproduced figure matches a published one when it is within this fraction of it,
#: or equal at the source's printed precision (whole TiB).
PUBLISHED_TOLERANCE = 0.001


@dataclass(frozen=True)
class PublishedRow:
    key: str  # line id or "total_<tier>"
    ours_tib: float
    published_tib: float

    @property
    def delta(self) -> float:
        """Relative difference (ours / published - 1); 0 when both are 0."""
        if self.published_tib == 0:
            return 0.0 if round(self.ours_tib) == 0 else float("inf")
        return self.ours_tib / self.published_tib - 1

    @property
    def matches(self) -> bool:
        return round(self.ours_tib) == round(self.published_tib) or abs(self.delta) <= PUBLISHED_TOLERANCE


def published_comparison(sz: Sizing) -> list[PublishedRow]:
    """Our figure next to each published one the scenario lists (TiB)."""
    out = []
    for key, pub in sz.scenario.published_tib.items():
        if key.startswith("total_"):
            ours = tib(sz.totals_bytes[key[len("total_"):]])
        else:
            ours = sz.item(key).tib
        out.append(PublishedRow(key, ours, pub))
    return out
