"""accuracy: how much each KV format loses, and how fast its kernels run.

Cases:
    <source>/<format>  errors of dequantized K, V and of attention against an FP16
                       cache (kvbench.formats.metrics), bits per element with scales;
                       sources: synthetic (the run's model shape, outlier key channels)
                       and llama_random (K/V/Q captured from a random-weight 2-layer
                       transformers Llama). Deterministic with the run's seed.
    speed/<format>     GB/s of the Triton quantize / dequantize kernels and % of a
                       same-run device-to-device copy (GPU only; skipped otherwise).

Formats: every registered format (kvbench.spec.FORMATS) when the run context says
--format was not given (``formats_given`` False), else the context's formats.

Options (--set): accuracy.sources=synthetic,llama_random; accuracy.tokens=N;
accuracy.speed=0 to leave out the speed cases.
"""

from __future__ import annotations

from typing import Any

from kvbench.bench import Benchmark, Case, Highlights, Plot, RunContext
from kvbench.errors import KvbenchError
from kvbench.spec import FORMATS, get_format, load_model

KEY = "accuracy"
NOTES = (
    "errors vs the fp16 cache; rel_err = ||x - ref||_F / ||ref||_F over all layers; "
    "max_abs_err in data units",
    "reference: the K/V cache in fp16; each format quantizes that fp16 tensor",
    "attention: softmax(q K^T / sqrt(d)) V in fp32, grouped-query heads, causal, last "
    "q_tokens positions as queries",
    "out-of-page scales (per tensor / per head) are calibrated on the tensor itself",
    "bits_per_element counts values, in-page scales and out-of-page scales",
)

_CACHE: dict[tuple, Any] = {}


def _model(ctx: RunContext):
    return load_model(ctx.model) if isinstance(ctx.model, str) else ctx.model


def _formats(ctx: RunContext) -> list[str]:
    """The formats to measure: every registered format (kvbench.spec.FORMATS, mxfp4 and the
    fp8 variants included: accuracy is cheap) unless the user chose formats; then those.
    The context says whether they chose (``RunContext.formats_given``); an empty list
    means every format too."""
    names = list(ctx.formats) if ctx.formats_given and ctx.formats else list(FORMATS)
    for n in names:
        get_format(n)
    return names


def _sizes(ctx: RunContext, source: str) -> tuple[int, int]:
    default = {("synthetic", True): 512, ("synthetic", False): 4096,
               ("llama_random", True): 256, ("llama_random", False): 2048}[(source, ctx.quick)]
    tokens = ctx.opt_int("accuracy.tokens", default, minimum=2)
    return tokens, min(64 if not ctx.quick else 16, tokens // 2)


def _sample(ctx: RunContext, source: str):
    from kvbench.formats.data import load_source

    model = _model(ctx)
    tokens, q_tokens = _sizes(ctx, source)
    key = (source, model.name if source == "synthetic" else "", tokens, q_tokens, ctx.seed)
    if key not in _CACHE:
        if len(_CACHE) >= 4:
            _CACHE.clear()
        _CACHE[key] = load_source(source, model, tokens, q_tokens, ctx.seed)
    return _CACHE[key]


def _accuracy_case(source: str, fmt: str):
    def run(ctx: RunContext) -> dict[str, Any]:
        from kvbench.formats.metrics import UNITS, evaluate
        from kvbench.results import make_case

        sample = _sample(ctx, source)
        metrics = evaluate(sample, fmt)
        cfg = {"format": fmt, "source": source, "tokens": sample.tokens,
               "q_tokens": sample.q[0].shape[0], "seed": ctx.seed, **sample.config}
        units = {k: v for k, v in UNITS.items() if k in metrics}
        return make_case(KEY, f"{source}/{fmt}", cfg, metrics=metrics, units=units,
                         notes=list(NOTES))

    return run


def _speed_case(fmt: str, config: dict[str, Any]):
    def run(ctx: RunContext) -> dict[str, Any]:
        from kvbench.measure.speed import run_speed

        return run_speed(ctx, KEY, f"speed/{fmt}", config, _model(ctx))

    return run


def plan(ctx: RunContext) -> list[Case]:
    from kvbench.formats.data import SOURCES

    sources = [s.strip() for s in ctx.opt("accuracy.sources", ",".join(SOURCES)).split(",") if s.strip()]
    if not sources:
        raise KvbenchError(f"--set accuracy.sources: no sources given; known: {', '.join(SOURCES)}")
    for s in sources:
        if s not in SOURCES:
            raise KvbenchError(f"unknown accuracy source {s!r}; known: {', '.join(SOURCES)}")
    formats = _formats(ctx)
    model = _model(ctx)
    cases = []
    for source in sources:
        for fmt in formats:
            tokens, q_tokens = _sizes(ctx, source)
            cfg = {"format": fmt, "source": source, "tokens": tokens, "q_tokens": q_tokens,
                   "seed": ctx.seed, "model": model.name if source == "synthetic" else "llama_random"}
            cases.append(Case(f"{source}/{fmt}", cfg, _accuracy_case(source, fmt)))
    _sizes(ctx, sources[0])  # a bad --set accuracy.tokens fails before anything runs
    speed = ctx.opt("accuracy.speed", "1").strip()
    if speed not in ("0", "1"):
        raise KvbenchError(f"--set accuracy.speed={speed!r}: expected 0 or 1")
    if speed == "1":
        from kvbench.measure.speed import speed_config

        for fmt in formats:
            cfg = speed_config(model, fmt, ctx.tokens_per_page, ctx.quick)
            cases.append(Case(f"speed/{fmt}", cfg, _speed_case(fmt, cfg)))
    return cases


def available(ctx: RunContext) -> tuple[bool, str]:
    return True, "runs on CPU; speed cases need CUDA"


#: the errors drawn, each with its marker and a sideways offset (bits) so the K and V
#: points of one format stand apart instead of on top of each other
_ERRORS = {"k_rel_err": ("o", "K", -0.15), "v_rel_err": ("s", "V", 0.15),
           "attn_rel_err": ("^", "attention", 0.0)}


def _error_panel(ax, cases: list[dict[str, Any]]) -> list[str]:
    """One source's errors against bits per element; returns the formats with zero error."""
    from kvbench import plotkit

    zero = []
    for c in cases:
        fmt, bits, m = str(c["config"].get("format")), c["metrics"]["bits_per_element"], c["metrics"]
        drawn = [(k, m[k]) for k in _ERRORS if isinstance(m.get(k), (int, float)) and m[k] > 0]
        if not drawn:
            zero.append(fmt)
            continue
        for k, v in drawn:
            mk, _label, dx = _ERRORS[k]
            ax.scatter([bits + dx], [v], marker=mk, color=plotkit.format_colour(fmt), s=36)
        top = max(v for _k, v in drawn)
        ax.annotate(fmt, (bits, top), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7)
    return zero


def plot_errors(doc: dict[str, Any]):
    """Relative error of K, V and attention against bits per element (log y), a panel
    per data source; colour = format (the same in every panel), marker = quantity."""
    from matplotlib.lines import Line2D

    from kvbench import plotkit
    from kvbench.results import find_cases

    cases = [c for c in find_cases(doc, KEY) if isinstance(c["metrics"].get("bits_per_element"), (int, float))]
    if not cases:
        return None
    by_src: dict[str, list[dict[str, Any]]] = {}
    for c in cases:
        by_src.setdefault(str(c["config"].get("source", "")), []).append(c)
    fig = plotkit.new_figure(6 * len(by_src), 4.8)
    for ax, (src, cs) in zip(fig.subplots(1, len(by_src), squeeze=False)[0], by_src.items()):
        zero = _error_panel(ax, cs)
        plotkit.log_axis(ax, "y")
        ax.set_xlabel("bits per element (values + scales)")
        ax.set_ylabel("relative error ||x - ref||_F / ||ref||_F")
        ax.set_title(f"{src or 'all'}" + (f" (zero error, not drawn: {', '.join(zero)})" if zero else ""),
                     fontsize=9, loc="left")
        ax.grid(alpha=0.3, which="both")
        ax.legend(handles=[Line2D([], [], marker=mk, ls="", color="#444", label=label)
                           for mk, label, _dx in _ERRORS.values()], fontsize=7)
    return fig, "accuracy: relative error of K, V and attention vs bits per element, per format"


def highlights(doc: dict[str, Any]) -> Highlights | None:
    """Per format (first source): bits per element and the errors of K, V, attention."""
    from kvbench.results import find_cases

    cases = [c for c in find_cases(doc, KEY) if "bits_per_element" in c["metrics"]]
    if not cases:
        return None
    first = cases[0]["config"].get("source")
    speed = {c["config"].get("format"): c["metrics"] for c in find_cases(doc, KEY) if "dequant_gbps" in c["metrics"]}
    rows = [[c["config"].get("format"), c["metrics"].get("bits_per_element"), c["metrics"].get("k_rel_err"),
             c["metrics"].get("v_rel_err"), c["metrics"].get("attn_rel_err"),
             speed.get(c["config"].get("format"), {}).get("dequant_pct_of_copy")]
            for c in cases if c["config"].get("source") == first]
    return Highlights(f"accuracy: error per format ({first} K/V), and its dequantize kernel against a copy",
                      [("format", ""), ("bits/element", "bits"), ("K rel err", ""), ("V rel err", ""),
                       ("attention rel err", ""), ("dequantize, % of copy", "%")], rows)


BENCH = Benchmark(
    key=KEY,
    description="KV format error (K, V, attention vs FP16) and quantize/dequantize kernel GB/s",
    plan=plan,
    available=available,
    headline="attn_rel_err",
    headline_unit="",
    columns=("k_rel_err", "v_rel_err", "bits_per_element", "compression_vs_fp16", "quant_gbps",
             "dequant_gbps", "copy_gbps", "quant_pct_of_copy", "dequant_pct_of_copy"),
    plots=(Plot("accuracy_error_vs_bits.png", plot_errors),),
    highlights=highlights,
    options={
        'accuracy.sources': 'K/V sources: synthetic, llama_random (default both)',
        'accuracy.tokens': 'tokens of K/V per source',
        'accuracy.speed': '0 to leave out the GPU kernel speed cases',
    },
)
