"""``kvbench compare``: result files side by side (hardware generations, runs).

The first file is the reference, A; the others are B, C, ... Cases are matched by
(bench, case name) (plus the config ``kind`` and an occurrence number when a file
repeats a name, as the transfer page-size sweep does). Each matched row shows the
case's headline figure per file with the 95% confidence interval of its median (from
the case's raw samples, ``kvbench.stats.median_ci``), and the ratio of each
file to A with a verdict: "within noise" (printed ``~``) when the two intervals
overlap, else faster / slower (better / worse for figures that are not speeds) by
the metric's direction. Cases a run flagged (``unstable``, ``above_ceiling``) carry
a marker explained under their table. Before the tables, one warning line per
reason the runs are not comparable. Only figures already in the files are shown;
ratios, intervals of the median and geometric means are the only arithmetic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kvbench.errors import KvbenchError
from kvbench.stats import median_ci
from kvbench.plotkit import log_axis, new_figure, png_bytes
from kvbench.report.cases import headline_metric, select_benches, unit_of
from kvbench.report.machine import (commit_text, disk_text, gpu_text, gpus_of, host_text, link_kind, pcie_text,
                                    ranks_text, run_label, software_text)
from kvbench.report.numbers import UNITS_LINE, fmt_num, fmt_ratio, geomean, higher_is_better, is_num
from kvbench.report.page import Page, Table, check_outputs, make_console, render_console, write_outputs
from kvbench.results import load

Key = tuple[str, str, str, int]  # (bench, kind, name, occurrence)
PLOT_CHUNK = 40  # cases per compare plot; more are split over numbered files
CI_LEVEL = 0.95  # confidence of the interval of each median
# median_ci returns the samples' whole range up to this many samples; its confidence
# is then 1 - 2^(1-n) (75% at n = 3), below CI_LEVEL
SMALL_N = 5
SAME = "within noise"
#: case flag -> marker after the run's figure, and what the marker means
MARKERS = {"unstable": ("*", "flagged unstable in that run: its paired sampling did not reach a 95% "
                             "confidence interval within +-5% of the median before its time budget"),
           "above_ceiling": ("^", "flagged above_ceiling in that run: a figure above its own "
                                  "ceiling beyond noise")}
OTHER_MARK = "!"


def letters(n: int) -> list[str]:
    return [chr(ord("A") + i) if i < 26 else f"F{i + 1}" for i in range(n)]


def keyed_cases(doc: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    """Cases of a document by (bench, kind, name, occurrence), in file order."""
    out: dict[Key, dict[str, Any]] = {}
    seen: dict[tuple[str, str, str], int] = {}
    for c in doc["cases"]:
        base = (c["bench"], str((c.get("config") or {}).get("kind") or ""), c["name"])
        n = seen.get(base, 0)
        seen[base] = n + 1
        out[(*base, n)] = c
    return out


def display_names(keys: list[Key]) -> dict[Key, str]:
    """Case names, with '[kind]' where one name has several kinds and '#n' for repeats."""
    kinds: dict[tuple[str, str], set[str]] = {}
    for b, k, name, _ in keys:
        kinds.setdefault((b, name), set()).add(k)
    out = {}
    for key in keys:
        b, k, name, n = key
        s = name
        if len(kinds[(b, name)]) > 1 and k:
            s += f" [{k}]"
        if n:
            s += f" #{n + 1}"
        out[key] = s
    return out


def _v(x: Any) -> str:
    if isinstance(x, (list, tuple)):
        return ",".join(str(i) for i in x) or "none"
    if isinstance(x, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(x.items())) or "none"
    return "unknown" if x is None else str(x)


def comparability_warnings(docs: list[dict[str, Any]], tags: list[str],
                           keys: list[dict[Key, dict[str, Any]]]) -> list[str]:
    """One line per reason the runs are not comparable (each file against A)."""
    out = []
    for tag, d in zip(tags, docs):
        if d["run"].get("status") != "complete":
            out.append(f"run {tag} status is {d['run'].get('status')!r}: it holds only the cases that finished")
        git = d["environment"].get("git") or {}
        if git.get("dirty"):
            out.append(f"run {tag} was made from a modified (dirty) checkout of commit "
                       f"{(git.get('commit') or '?')[:12]}: its code is not exactly that commit")
    a = docs[0]
    ra, oa = a["run"], a["run"].get("options") or {}
    for i, (tag, d) in enumerate(zip(tags[1:], docs[1:]), 1):
        rb, ob = d["run"], d["run"].get("options") or {}

        def diff(what: str, x: Any, y: Any, why: str = "") -> None:
            if x != y:
                out.append(f"{what} differs: A {_v(x)} vs {tag} {_v(y)}{why}")

        if rb.get("id") == ra.get("id"):
            out.append(f"A and {tag} are the same run ({ra.get('id')}): ratios compare it with itself")
        diff("schema", a.get("schema"), d.get("schema"))
        diff("kvbench version", ra.get("kvbench_version"), rb.get("kvbench_version"))
        diff("model", oa.get("model"), ob.get("model"), " (KV page shapes differ)")
        if oa.get("model") == ob.get("model"):
            diff("model shape", ra.get("model"), rb.get("model"))
        diff("formats", oa.get("formats"), ob.get("formats"))
        diff("tokens_per_page", oa.get("tokens_per_page"), ob.get("tokens_per_page"), " (page bytes differ)")
        diff("layouts", oa.get("layouts"), ob.get("layouts"))
        diff("benches", ra.get("benches"), rb.get("benches"))
        diff("--set options", oa.get("set") or {}, ob.get("set") or {})
        qa, qb = ra.get("quick"), rb.get("quick")
        diff("quick vs full", {True: "quick", False: "full"}.get(qa, qa), {True: "quick", False: "full"}.get(qb, qb),
             " (sizes and samples differ)")
        diff("mode", ra.get("mode"), rb.get("mode"), " (a cpu-fallback run measures host reference code)")
        diff("timer", (a.get("method") or {}).get("timer"), (d.get("method") or {}).get("timer"))
        diff("ranks and link", link_kind(a["environment"]), link_kind(d["environment"]),
             " (over loopback remote figures measure the software path, not a NIC)")
        ga, gb = a["environment"].get("git") or {}, d["environment"].get("git") or {}
        diff("commit", (ga.get("commit") or "")[:12] or None, (gb.get("commit") or "")[:12] or None,
             " (benchmark code may differ)")
        only_a = [k for k in keys[0] if k not in keys[i]]
        only_b = [k for k in keys[i] if k not in keys[0]]
        if only_a or only_b:
            ex = (only_a or only_b)[0]
            out.append(f"cases not in both A and {tag}: {len(only_a)} in A only, {len(only_b)} in {tag} only "
                       f"(e.g. {ex[0]} {ex[2]!r})")
    return out


def hardware_table(docs: list[dict[str, Any]], tags: list[str], paths: list[str]) -> Table:
    t = Table(f"Hardware and software side by side; {UNITS_LINE}",
              ["", *[f"{tag}: {run_label(d)}" for tag, d in zip(tags, docs)]])

    def row(name: str, fn: Any) -> None:
        t.add([name, *[fn(d) for d in docs]])

    def env(fn: Any) -> Any:
        return lambda d: fn(d.get("environment") or {})

    def link(d: dict[str, Any]) -> str:
        gpus = gpus_of(d.get("environment") or {})
        return pcie_text(gpus[0]) if gpus else "none"

    t.add(["file", *paths])
    row("run", lambda d: f"{d['run']['id']} ({d['run'].get('status')}, {d['run'].get('started_utc')})")
    row("GPU", env(gpu_text))
    row("PCIe link", link)
    row("host", env(host_text))
    row("disk (nvme tier)", env(disk_text))
    row("software", env(software_text))
    if any(isinstance((d.get("environment") or {}).get("distributed"), dict) for d in docs):
        row("ranks, link", env(ranks_text))
    row("kvbench, commit", lambda d: f"{d['run'].get('kvbench_version')}, {env(commit_text)(d)}")
    row("mode", lambda d: f"{d['run'].get('mode')}, {'quick' if d['run'].get('quick') else 'full'}")
    row("model, formats, tokens/page", lambda d: (
        f"{(d['run'].get('options') or {}).get('model')}, "
        f"{_v((d['run'].get('options') or {}).get('formats'))}, "
        f"{(d['run'].get('options') or {}).get('tokens_per_page')}"))
    return t


def _marks(case: dict[str, Any] | None) -> str:
    """Markers of a case's flags ('*' unstable, '^' above_ceiling, '!' any other)."""
    flags = (case or {}).get("flags") or []
    return "".join(dict.fromkeys(MARKERS.get(f, (OTHER_MARK,))[0] for f in flags))


def _ci(case: dict[str, Any] | None, metric: str) -> tuple[float, float] | None:
    """CI_LEVEL interval of the median of a case's raw samples of ``metric`` (same unit
    as the metric); None when the case is not ok or has fewer than 2 samples (one
    sample says nothing about noise)."""
    if case is None or case["status"] != "ok":
        return None
    xs = [float(x) for x in (case.get("samples") or {}).get(metric) or [] if is_num(x)]
    return median_ci(xs, CI_LEVEL) if len(xs) > 1 else None


def _cell(case: dict[str, Any] | None, metric: str, unit: str) -> str:
    """'41 [40-42]*': the figure, its interval of the median and its flag markers."""
    if case is None:
        return "absent"
    if case["status"] != "ok":
        return case["status"]
    v = case["metrics"].get(metric)
    if not is_num(v):
        return "n/a" + _marks(case)
    ci = _ci(case, metric)
    band = f" [{fmt_num(ci[0], unit)}-{fmt_num(ci[1], unit)}]" if ci else ""
    return fmt_num(v, unit) + band + _marks(case)


def _value(case: dict[str, Any] | None, metric: str) -> float | None:
    if case is None or case["status"] != "ok":
        return None
    v = case["metrics"].get(metric)
    return float(v) if is_num(v) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return b / a if a not in (None, 0) and b is not None else None


def _better(metric: str) -> str:
    return {True: "higher is better", False: "lower is better"}.get(higher_is_better(metric), "")


def _is_speed(metric: str) -> bool:
    """A rate or a time (where 'faster' is the word), rather than an error or a share."""
    m = metric.lower()
    return m.endswith(("gbps", "tok_s", "flop_s", "_s")) or m == "seconds" or m.startswith("speedup")


def verdict(metric: str, ci_a: tuple[float, float] | None, ci_b: tuple[float, float] | None) -> str:
    """B against A by their intervals of the median: SAME when they overlap; else
    'faster'/'slower' for rates and times, 'better'/'worse' for other figures with a
    known direction, 'higher'/'lower' when the name does not say; '' without both."""
    if ci_a is None or ci_b is None:
        return ""
    if ci_a[0] <= ci_b[1] and ci_b[0] <= ci_a[1]:
        return SAME
    up = ci_b[0] > ci_a[1]
    hib = higher_is_better(metric)
    if hib is None:
        return "higher" if up else "lower"
    good, bad = ("faster", "slower") if _is_speed(metric) else ("better", "worse")
    return good if up == hib else bad


def _ratio_cell(r: float | None, word: str) -> str:
    """'~1.01x within noise', '1.5x faster', or the bare ratio when noise is unknown."""
    if r is None:
        return ""
    if word == SAME:
        return f"~{fmt_ratio(r)} {SAME}"
    return f"{fmt_ratio(r)} {word}".strip()


def _groups(order: list[Key], keyed: list[dict[Key, dict[str, Any]]], bench: str
            ) -> tuple[dict[tuple[str, str], list[Key]], list[Key]]:
    """Rows of one bench that are ok in some file, grouped by (kind, headline metric
    of the first ok case); and the rows ok in no file."""
    groups: dict[tuple[str, str], list[Key]] = {}
    none_ok: list[Key] = []
    for key in order:
        if key[0] != bench:
            continue
        ok = [kc[key] for kc in keyed if key in kc and kc[key]["status"] == "ok"]
        if ok:
            groups.setdefault((key[1], headline_metric(ok[0])), []).append(key)
        else:
            none_ok.append(key)
    return groups, none_ok


def _legend(cases: list[dict[str, Any] | None], metric: str, unjudged: bool) -> list[str]:
    """Notes under a case table: the flag markers used in it, small-sample intervals,
    ratios without a verdict."""
    out = []
    flags = list(dict.fromkeys(f for c in cases for f in (c or {}).get("flags") or []))
    for f in [f for f in flags if f in MARKERS]:
        out.append(f"{MARKERS[f][0]} = {MARKERS[f][1]}")
    other = [f for f in flags if f not in MARKERS]
    if other:
        out.append(f"{OTHER_MARK} = flagged in that run ({', '.join(other)}; see its report)")
    ns = [len((c.get("samples") or {}).get(metric) or []) for c in cases if _ci(c, metric)]
    small = sorted({n for n in ns if n <= SMALL_N})
    if small:  # the whole range misses the median with probability 2 * 2^-n
        conf = ", ".join(f"{1 - 2.0 ** (1 - n):.0%} at n = {n}" for n in small)
        out.append(f"an interval from {SMALL_N} or fewer samples is their whole range, of less than "
                   f"{CI_LEVEL:.0%} confidence ({conf})")
    if unjudged:
        out.append("a ratio without a verdict: a run has fewer than 2 samples of this figure, "
                   "so its noise is unknown")
    return out


@dataclass
class GroupRows:
    """One (bench, kind, metric) case table and what the summary and plot need from it:
    the keys ok in every file, and per file (B, C, ...) the verdict of each such key."""

    table: Table
    common: list[Key]
    verdicts: list[list[str]]


def group_table(title: str, metric: str, unit: str, ks: list[Key], keyed: list[dict[Key, dict[str, Any]]],
                names: dict[Key, str], columns: list[str]) -> GroupRows:
    """The case table of one group: per file the median [CI] with flag markers, then
    each file's ratio to A with its verdict."""
    t = Table(title, columns, numeric=set(range(1, len(columns))))
    common: list[Key] = []
    verdicts: list[list[str]] = [[] for _ in keyed[1:]]
    seen: list[dict[str, Any] | None] = []
    unjudged = False
    for k in ks:
        cases = [kc.get(k) for kc in keyed]
        seen += cases
        vals = [_value(c, metric) for c in cases]
        cis = [_ci(c, metric) for c in cases]
        words = [verdict(metric, cis[0], ci) if vals[0] is not None and v is not None else ""
                 for ci, v in zip(cis[1:], vals[1:])]
        ratios = [_ratio(vals[0], v) for v in vals[1:]]
        unjudged |= any(r is not None and not w for r, w in zip(ratios, words))
        complete = all(v is not None for v in vals)
        style = "" if complete else "skipped"
        if complete and any(_marks(c) for c in cases):
            style = "flagged"
        t.add([names[k], *[_cell(c, metric, unit) for c in cases],
               *[_ratio_cell(r, w) for r, w in zip(ratios, words)]], style)
        if complete:
            common.append(k)
            for i, w in enumerate(words):
                verdicts[i].append(w)
    t.notes = _legend(seen, metric, unjudged)
    return GroupRows(t, common, verdicts)


def _verdict_counts(words: list[str]) -> str:
    """'2 faster, 1 slower, 3 within noise' (counts of the verdicts given)."""
    n = {w: words.count(w) for w in dict.fromkeys(words) if w}
    order = sorted(n, key=lambda w: (w == SAME, w))
    return ", ".join(f"{n[w]} {w}" for w in order)


def build_compare(docs: list[dict[str, Any]], paths: list[str], benches: list[str] | None = None,
                  plots: bool = False) -> Page:
    tags = letters(len(docs))
    labels = [f"{run_label(d)} / {d['run']['id']}" for d in docs]
    keyed = [keyed_cases(d) for d in docs]
    order = list(dict.fromkeys(k for kc in keyed for k in kc))
    all_benches = list(dict.fromkeys(k[0] for k in order))
    chosen = select_benches(all_benches, benches, " and ".join(paths))
    names = display_names(order)
    runs = [f"{t}: {run_label(d)}" for t, d in zip(tags, docs)]  # run ids are in "Runs"; 100 columns

    page = Page("kvbench compare: " + " vs ".join(f"{t} = {lab}" for t, lab in zip(tags, labels)))
    page.warnings(comparability_warnings(docs, tags, keyed))
    page.heading("Runs")
    page.lines([f"{t} = {lab} ({p})" for t, lab, p in zip(tags, labels, paths)]
               + [f"figures are medians [{CI_LEVEL:.0%} confidence interval of the median, from the "
                  "case's raw samples]",
                  f"ratios are {', '.join(f'{t}/A' for t in tags[1:])}, each file's figure over A's; "
                  f"'~' = {SAME}: the two intervals overlap"])
    page.table(hardware_table(docs, tags, paths))

    summary = Table("Geometric mean of the ratios over the cases ok in every file",
                    ["bench", "kind", "metric", "better", "cases",
                     *[f"{t}/A geomean" for t in tags[1:]], *[f"{t}/A min-max" for t in tags[1:]],
                     *[f"{t}/A verdicts" for t in tags[1:]]],
                    numeric=set(range(4, 5 + 2 * (len(docs) - 1))))
    tables: list[Table] = []
    for bench in chosen:
        groups, none_ok = _groups(order, keyed, bench)
        for (kind, metric), ks in groups.items():
            ref = next((kc[k] for k in ks for kc in keyed if k in kc and kc[k]["status"] == "ok"), None)
            unit = unit_of(ref, metric) if ref else ""
            better = _better(metric)
            head = f"{metric} ({unit})" if unit else metric
            title = (f"{bench}" + (f" / {kind}" if kind else "") + f": {head}, median [{CI_LEVEL:.0%} CI]"
                     + (f"; {better}" if better else ""))
            g = group_table(title, metric, unit, ks, keyed, names,
                            ["case", *runs, *[f"{t}/A" for t in tags[1:]]])
            tables.append(g.table)
            if g.common:
                summary.add([bench, kind, head, better.split(" ")[0], str(len(g.common)),
                             *_ratio_summary(keyed, g.common, metric), *map(_verdict_counts, g.verdicts)])
            if plots and g.common:
                page.plots += plot_compare(bench, kind, metric, unit, [names[k] for k in g.common],
                                           [[_value(kc[k], metric) for k in g.common] for kc in keyed],
                                           [f"{t}: {lab}" for t, lab in zip(tags, labels)],
                                           [[_ci(kc[k], metric) for k in g.common] for kc in keyed])
        if none_ok:
            tables.append(_none_ok_table(bench, none_ok, keyed, names, runs))
    page.heading("Summary")
    if summary.rows:
        page.table(summary)
    else:
        page.lines(["no case is ok in every file"])
    page.heading("Cases")
    for t in tables:
        page.table(t)
    return page


def _ratio_summary(keyed: list[dict[Key, dict[str, Any]]], common: list[Key], metric: str) -> list[str]:
    """Per file B, C, ...: the geometric mean of its ratios to A, then their min-max."""
    per_file = [[_ratio(_value(keyed[0][k], metric), _value(kc[k], metric)) for k in common]
                for kc in keyed[1:]]
    gm = [fmt_ratio(geomean(r)) for r in per_file]
    mm = []
    for r in per_file:
        r = [x for x in r if x is not None]
        mm.append(f"{fmt_ratio(min(r))}-{fmt_ratio(max(r))}" if r else "")
    return gm + mm


def _none_ok_table(bench: str, none_ok: list[Key], keyed: list[dict[Key, dict[str, Any]]],
                   names: dict[Key, str], runs: list[str]) -> Table:
    t = Table(f"{bench}: {len(none_ok)} case(s) ok in no file", ["case", *runs, "reason"])
    for k in none_ok:
        cases = [kc.get(k) for kc in keyed]
        reason = next((c.get("reason") for c in cases if c is not None and c.get("reason")), "")
        t.add([names[k], *[c["status"] if c is not None else "absent" for c in cases], reason],
              "error" if any(c is not None and c["status"] == "error" for c in cases) else "skipped")
    return t


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def plot_compare(bench: str, kind: str, metric: str, unit: str, names: list[str],
                 values: list[list[float | None]], labels: list[str],
                 cis: list[list[tuple[float, float] | None]] | None = None) -> list[tuple[str, str, bytes]]:
    """Grouped horizontal bars of one headline metric: a group per case, a bar per
    file, with the interval of each median as an error bar where ``cis`` has one
    (same nesting as ``values``); split into files of PLOT_CHUNK cases."""
    out = []
    parts = -(-len(names) // PLOT_CHUNK)
    size = -(-len(names) // parts)  # even chunks: 46 cases -> 23 + 23, not 40 + 6
    chunks = [range(i, min(i + size, len(names))) for i in range(0, len(names), size)]
    flat = [v for vs in values for v in vs if v is not None and v > 0]
    log = bool(flat) and max(flat) / min(flat) > 100
    cis = cis if cis and any(ci for per_file in cis for ci in per_file) else None
    for part, idx in enumerate(chunks, 1):
        n, f = len(idx), len(labels)
        fig = new_figure(10, 0.18 * n * f + 0.25 * n + 1.8)
        ax = fig.subplots()
        h = 0.8 / f
        for j, lab in enumerate(labels):
            ys = [i + (j - (f - 1) / 2) * h for i in range(n)]
            ax.barh(ys, [values[j][i] or 0 for i in idx], height=h, label=lab,
                    xerr=_bar_errors(values[j], cis[j], idx) if cis else None,
                    error_kw={"elinewidth": 0.8, "capsize": 2})
        ax.set_yticks(range(n), [names[i] for i in idx], fontsize=7)
        ax.invert_yaxis()
        if log:
            log_axis(ax, "x")
        ax.set_xlabel((f"{metric} ({unit})" if unit else metric)
                      + (f", median; error bars: {CI_LEVEL:.0%} CI of the median (the samples' "
                         f"whole range when n <= {SMALL_N})" if cis else ""))
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        suffix = f" ({part}/{len(chunks)})" if len(chunks) > 1 else ""
        title = f"{bench}" + (f" / {kind}" if kind else "") + f": {metric}, cases ok in every file{suffix}"
        ax.set_title(title, fontsize=10, loc="left")
        name = f"compare_{_safe(bench)}" + (f"_{_safe(kind)}" if kind else "") + f"_{_safe(metric)}"
        name += f"_{part}.png" if len(chunks) > 1 else ".png"
        out.append((name, title, png_bytes(fig)))
    return out


def _bar_errors(values: list[float | None], cis: list[tuple[float, float] | None],
                idx: range) -> list[list[float]]:
    """(below, above) each median to its interval's ends, for matplotlib's xerr; 0 where
    a figure has no interval."""
    below, above = [], []
    for i in idx:
        v, ci = values[i], cis[i]
        below.append(max(v - ci[0], 0.0) if v is not None and ci else 0.0)
        above.append(max(ci[1] - v, 0.0) if v is not None and ci else 0.0)
    return [below, above]


def compare(paths: list[str], *, plot_dir: str | None = None, html_path: str | None = None,
            benches: list[str] | None = None, console: Any = None) -> Page:
    """Load result files, print them side by side, write plots / HTML if asked. One
    fleet result alone (kvbench run --fleet) puts its ranks side by side."""
    from kvbench.report.fleet import expand, is_fleet, spread_table

    check_outputs(plot_dir, html_path)
    loaded = [load(p) for p in paths]
    docs, names = expand(loaded, [str(p) for p in paths])
    if len(docs) < 2:
        raise KvbenchError("compare needs at least two result files, or one fleet result of two ranks or more")
    page = build_compare(docs, names, benches, plots=plot_dir is not None or html_path is not None)
    for d in (d for d in loaded if is_fleet(d)):
        page.heading("Fleet spread")
        page.table(spread_table(d))
    console = console or make_console()
    render_console(page, console)
    write_outputs(page, plot_dir, html_path, console)
    return page
