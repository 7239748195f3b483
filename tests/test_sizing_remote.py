"""Measured mode with the remote tier: a remote result's remote->dram GB/s stands in for a
pooled-DRAM placement (a reuse hit fetched from another host's memory, then dram->hbm),
reported beside the DRAM / NVMe split; a loopback figure is flagged as not a NIC's.

The result documents are TEST INPUT built with kvbench.results.make_case (invented
figures, not measurements) in the shape the remote and transfer benchmarks write."""

from __future__ import annotations

import pytest

from kvbench.results import SCHEMA, make_case, write_atomic
from kvbench.sizing.measured import measure, tier_bandwidths
from kvbench.sizing.measured_remote import LOOPBACK
from kvbench.sizing.scenario import load_scenario


def _doc(cases):
    return {"schema": SCHEMA,
            "run": {"id": "test", "started_utc": "2026-01-01T00:00:00Z", "status": "ok",
                    "kvbench_version": "0.1.0", "mode": "quick"},
            "environment": {"host": {"name": "test"}, "software": {}, "gpus": []},
            "method": {"timer": "test", "units": {}}, "cases": cases}


def _remote(direction, batching, gbps, *, loopback=True, kind="paged"):
    link = "loopback: all 2 ranks on host a (no NIC in the path)" if loopback else \
        "network: 2 hosts; fastest NIC here eth0 at 100,000 Mb/s"
    cfg = {"kind": kind, "direction": direction, "batching": batching, "format": "fp16", "layout": "layer",
           "tokens_per_page": 16, "model": "ms-reference", "loopback": loopback, "link": link}
    name = "/".join(([kind] if kind != "paged" else []) + [direction, "layer/fp16/16tok", batching])
    return make_case("remote", name, cfg, metrics={"gbps": gbps, "pct_of_ceiling": 70.0}, units={"gbps": "GB/s"})


def _dram_hbm(gbps):
    cfg = {"src": "dram", "dst": "hbm", "direction": "dram->hbm", "method": "batched", "format": "fp16",
           "tokens_per_page": 16, "layout": "layer", "kind": "paged", "model": "ms-reference",
           "page_bytes": 16 * 2 * 8 * 128 * 2}
    return make_case("transfer", "dram->hbm/x", cfg, metrics={"gbps": gbps}, units={"gbps": "GB/s"})


def _write(tmp_path, name, cases):
    path = tmp_path / name
    write_atomic(path, _doc(cases))
    return str(path)


def test_remote_bandwidth_prefers_coalesced_paged_and_flags_loopback(tmp_path):
    from kvbench.results import load

    path = _write(tmp_path, "r.json", [_remote("remote->dram", "per_page", 0.4),
                                       _remote("remote->dram", "coalesced", 2.4),
                                       _remote("remote->dram", "grouped", 1.5),
                                       _remote("remote->dram", "coalesced", 9.0, kind="sweep"),
                                       _remote("dram->remote", "coalesced", 2.1)])
    bw = tier_bandwidths([(path, load(path))])
    gbps, src = bw["remote->dram"]
    assert gbps == 2.4 and "remote/remote->dram/layer/fp16/16tok/coalesced" in src and LOOPBACK in src
    assert bw["dram->remote"][0] == 2.1
    across = _write(tmp_path, "n.json", [_remote("remote->dram", "coalesced", 11.0, loopback=False)])
    gbps, src = tier_bandwidths([(across, load(across))])["remote->dram"]
    assert gbps == 11.0 and LOOPBACK not in src and "eth0" in src


def test_pooled_dram_row_from_a_remote_result(tmp_path):
    scn = load_scenario("ms-chatgpt-2026")
    plain = measure(scn, [_write(tmp_path, "g.json", [_dram_hbm(50.0)])])
    assert all(r.path != "remote" for r in plain.reuse) and not plain.notes  # no remote result: no row
    assert all("remote" not in x.quantity for x in plain.missing)
    m = measure(scn, [_write(tmp_path, "g2.json", [_dram_hbm(50.0)]),
                      _write(tmp_path, "r.json", [_remote("remote->dram", "coalesced", 2.5)])])
    row = next(r for r in m.reuse if r.path == "remote")
    nbytes = m.sizing.sequence_kv_bytes(m.reuse_prefix_tokens)
    assert row.seconds == pytest.approx(nbytes / 2.5e9)  # the slower leg (remote->dram) bounds
    assert "remote->dram 2.5 GB/s then dram->hbm 50 GB/s" in row.note and not row.lower_bound
    assert LOOPBACK in row.source
    assert any("not a NIC figure" in n and "remote->dram 2.5 GB/s" in n for n in m.notes)
    # the split is local DRAM / NVMe: the pooled row is beside it, not in it
    dram = next(r for r in m.reuse if r.path == "dram")
    assert dram.seconds == pytest.approx(nbytes / 50e9)
    alone = measure(scn, [_write(tmp_path, "r2.json", [_remote("remote->dram", "coalesced", 2.5)])])
    row = next(r for r in alone.reuse if r.path == "remote")
    assert row.lower_bound and "dram->hbm not measured" in row.note
