"""kvbench compare and report against noise: intervals of the median, verdicts that do
not call noise a change, flags (unstable, above_ceiling) and paired ratios.

Documents here are test input: the layout of tests/test_report.py's made_up_doc with
its cases replaced by made-up samples built with kvbench.results.make_case. Their
figures mean nothing; no timing is measured or asserted.
"""

from __future__ import annotations

import pytest

from kvbench.stats import median_ci
from kvbench.results import make_case, write_atomic
from test_report import PNG_MAGIC, TEST_NOTE, console, made_up_doc

N = [TEST_NOTE]


def span(start: float, step: float, n: int = 9) -> list[float]:
    """n evenly spaced made-up samples; with 9 the 95% interval of the median is the
    2nd..8th of them (median_ci), not their whole range."""
    return [start + i * step for i in range(n)]


def transfer(name: str, gbps: list[float], **extra) -> dict:
    return make_case("transfer", name, {"kind": "paged", "direction": "dram->hbm"},
                     samples={"gbps": gbps}, units={"gbps": "GB/s"}, notes=N, **extra)


def prefix(name: str, seconds: list[float]) -> dict:
    return make_case("prefix", name, {"source": "dram"}, samples={"seconds": seconds},
                     units={"seconds": "s"}, notes=N)


def doc(gpu: str, run_id: str, cases: list[dict]) -> dict:
    d = made_up_doc(gpu, 80.0, 1.0, run_id=run_id)
    d["cases"] = cases
    return d


@pytest.fixture
def noisy_pair() -> tuple[dict, dict]:
    """A and B (test input): 'overlap' 104 vs 108 GB/s with overlapping intervals,
    'apart' 104 vs 154 GB/s without; 'flaky' flagged unstable in B; prefix seconds
    that got longer (slower) in B; 'single' with one sample per run."""
    a = doc("NVIDIA H100 80GB HBM3", "aaaa00000001", [
        transfer("overlap", span(100, 1)), transfer("apart", span(100, 1)),
        transfer("flaky", span(50, 1)), transfer("single", [10.0]),
        prefix("1024tok/dram", span(1.0, 0.1))])
    flaky = transfer("flaky", span(40, 5))
    flaky["flags"] = ["unstable"]
    b = doc("NVIDIA H200", "bbbb00000002", [
        transfer("overlap", span(104, 1)), transfer("apart", span(150, 1)),
        flaky, transfer("single", [20.0]),
        prefix("1024tok/dram", span(2.0, 0.1))])
    return a, b


def case_rows(page, prefix_: str) -> dict[str, list[str]]:
    """Rows by case name of the tables whose title starts with prefix_."""
    return {r[0]: r for kind, t in page.blocks if kind == "table" and t.title.startswith(prefix_)
            for r in t.rows}


def notes_of(page, prefix_: str) -> list[str]:
    return [n for kind, t in page.blocks if kind == "table" and t.title.startswith(prefix_)
            for n in t.notes]


def test_interval_of_the_median_next_to_each_figure(noisy_pair):
    from kvbench.report.compare import build_compare

    assert median_ci(span(100, 1)) == (101, 107)  # the 2nd and 8th of 9 samples
    rows = case_rows(build_compare(list(noisy_pair), ["a.json", "b.json"]), "transfer / paged")
    assert rows["overlap"][1:3] == ["104 [101-107]", "108 [105-111]"]
    assert rows["apart"][1:3] == ["104 [101-107]", "154 [151-157]"]
    assert rows["single"][1:3] == ["10", "20"]  # one sample: no interval


def test_overlapping_intervals_are_within_noise_others_faster_or_slower(noisy_pair):
    from kvbench.report.compare import build_compare

    page = build_compare(list(noisy_pair), ["a.json", "b.json"])
    rows = case_rows(page, "transfer / paged")
    assert rows["overlap"][3] == "~1.04x within noise"
    assert rows["apart"][3] == "1.48x faster"
    # seconds: lower is better, so B's longer time is slower
    assert case_rows(page, "prefix")["1024tok/dram"][3] == "1.71x slower"
    # one sample per run: the ratio without a verdict, and a note saying why
    assert rows["single"][3] == "2x"
    assert any("fewer than 2 samples" in n for n in notes_of(page, "transfer / paged"))
    summary = case_rows(page, "Geometric")
    assert summary["transfer"][-1] == "1 faster, 2 within noise"
    assert summary["prefix"][-1] == "1 slower"


def test_verdict_directions_and_edges():
    from kvbench.report.compare import SAME, verdict

    assert verdict("gbps", (1.0, 2.0), (2.0, 3.0)) == SAME  # touching intervals overlap
    assert verdict("gbps", (1.0, 2.0), (2.5, 3.0)) == "faster"
    assert verdict("gbps", (2.5, 3.0), (1.0, 2.0)) == "slower"
    assert verdict("seconds", (1.0, 2.0), (2.5, 3.0)) == "slower"
    assert verdict("attn_rel_err", (1.0, 2.0), (0.1, 0.5)) == "better"
    assert verdict("pct_of_ceiling", (80.0, 85.0), (60.0, 70.0)) == "worse"
    assert verdict("pages", (1.0, 2.0), (3.0, 4.0)) == "higher"  # the name gives no direction
    assert verdict("gbps", None, (3.0, 4.0)) == ""


def test_unstable_case_is_marked_in_compare(noisy_pair, tmp_path):
    from kvbench.report.compare import compare

    paths = [write_atomic(tmp_path / f"{t}.json", d) for t, d in zip("ab", noisy_pair)]
    con, buf = console()
    page = compare([str(p) for p in paths], plot_dir=str(tmp_path / "plots"),
                   html_path=str(tmp_path / "c.html"), console=con)
    rows = case_rows(page, "transfer / paged")
    assert rows["flaky"][2].endswith("*") and not rows["flaky"][1].endswith("*")
    assert not rows["overlap"][2].endswith("*")
    text = buf.getvalue()
    assert "* = flagged unstable in that run" in text
    html = (tmp_path / "c.html").read_text()
    assert '<tr class="flagged">' in html and "flagged unstable in that run" in html
    assert "within noise" in html
    pngs = list((tmp_path / "plots").iterdir())
    assert pngs and all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)


def test_report_shows_flags_and_paired_ratios_with_their_interval(noisy_pair, tmp_path):
    from kvbench.report.run_report import report

    paired = transfer("paired", span(40, 1), metrics={"pct_of_fio": 97.0})
    paired["flags"] = ["above_ceiling"]
    paired["paired"] = {
        "pct_of_ceiling": {"median": 88.0, "p10": 86.0, "p90": 91.0, "ci_low": 85.0, "ci_high": 92.0,
                           "ci_level": 0.95, "halfwidth": 0.045, "n": 20, "numerator": "gbps",
                           "denominator": "ceiling_gbps"},
        "pct_of_fio": {"median": 97.0, "p10": 95.0, "p90": 99.5, "ci_low": 96.0, "ci_high": 98.5,
                       "ci_level": 0.95, "halfwidth": 0.015, "n": 20, "numerator": "gbps",
                       "denominator": "fio_gbps"}}
    paired["metrics"]["pct_of_ceiling"] = 88.0
    paired["units"].update(pct_of_ceiling="%", pct_of_fio="%")
    d = noisy_pair[1]
    d["cases"].append(paired)
    path = write_atomic(tmp_path / "b.json", d)
    con, buf = console()
    page = report(str(path), console=con)
    table = next(t for kind, t in page.blocks if kind == "table" and t.title.startswith("transfer / paged"))
    rows = {r[0]: dict(zip(table.columns, r)) for r in table.rows}
    assert rows["flaky"]["flags"] == "unstable" and rows["overlap"]["flags"] == ""
    assert rows["paired"]["flags"] == "above_ceiling"
    assert rows["paired"]["pct_of_ceiling (%)"] == "88% [85-92]"
    assert rows["paired"]["pct_of_fio (%)"] == "97% [96-98.5]"  # not in EXTRA_COLUMNS: shown as paired
    text = buf.getvalue()
    assert "88% [85-92]" in text and "unstable" in text and "above_ceiling" in text
    assert "95% confidence interval of the median" in text
