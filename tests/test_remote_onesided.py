"""The remote tier with a one-sided engine moving the bytes (``--set
remote.transport=nixl`` or ``mooncake``), over 2 ranks on this machine: bit-exact round
trips through the paged store for every batching, a short `kvbench run --bench remote
--ranks 2` with its paired ceilings and what it records of the engine, a rank killed
mid-run ending the run within the timeout, a run across two hosts (network namespaces:
test_multinode), and (NIXL) an engine that cannot start.

Needs the engine's Python package (pip install nixl; pip install
mooncake-transfer-engine-non-cuda); where one is missing its tests skip saying so
(.ci/run runs this file in a venv that has both, where a skip fails CI)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from test_multinode import WHY as NO_TWO_HOSTS
from test_multinode import _on_both_hosts, namespace_hosts
from test_remote import SMALL, _isolated, _kvbench, kill_rank_1_mid_run, round_trip

#: transport: (its module, the label its cases carry, the pip package)
ENGINES = {"nixl": ("nixl._api", "NIXL UCX", "nixl"),
           "mooncake": ("mooncake.engine", "Mooncake transfer engine", "mooncake-transfer-engine-non-cuda")}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


TRANSPORTS = [pytest.param(t, marks=pytest.mark.skipif(not _importable(m),
                                                       reason=f"{m} is not installed (pip install {pkg})"))
              for t, (m, _, pkg) in ENGINES.items()]


def _rank_main(rank: int, port: int, transport: str) -> None:
    """One of two ranks (torch.multiprocessing.spawn): rank 1 serves, rank 0 moves pages
    through the store to and from a one-sided remote pool and checks them bit-exact.
    Ends through remote_onesided.exit_process (NIXL's wheel crashes in the C library's exit)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      TORCHELASTIC_USE_AGENT_STORE="True")
    from kvbench import distributed
    from kvbench.tiers import remote_onesided
    from kvbench.tiers.remote import stop_servers
    from kvbench.tiers.remote_server import serve

    distributed.init_group(20)
    try:
        distributed.gather_identities()
        if rank == 1:
            serve(client=0)
        else:
            try:
                _round_trips(transport)
            finally:
                assert stop_servers() == []
    finally:
        distributed.close_group()
    remote_onesided.exit_process(0)


def _round_trips(transport: str) -> None:
    import random

    from kvbench.spec import PageSpec, get_format, load_model
    from kvbench.store import PagePool
    from kvbench.tiers import DramTier
    from kvbench.tiers.remote import messages
    from kvbench.tiers.remote_onesided import OneSidedBuffer, OneSidedTier

    model, rng = load_model("Llama-3.1-8B"), random.Random(0)
    for fmt, layout, tokens in (("fp16", "layer", 16), ("nvfp4", "block", 4), ("fp8_e4m3", "layer", 64)):
        spec = PageSpec(model, get_format(fmt), tokens, layout)
        for batching in ("per_page", "grouped", "coalesced"):
            tier = OneSidedTier(peer=1, batching=batching, chunk_bytes=64 * 1024, transport=transport)
            assert tier.available()[0] and ENGINES[transport][1] in tier.label
            n = 10
            remote, here = PagePool(tier, spec, 2 * n), PagePool(DramTier(pinned=False), spec, 2 * n)
            assert isinstance(remote.buffer, OneSidedBuffer)
            data, away = round_trip(here, remote, n, rng, (fmt, layout, batching))
            assert remote.buffer._local == {}  # the store's one-off tensors were let go
            # the bench's own path: rows kept registered, the ceiling's contiguous bytes
            rows = torch.empty((n, spec.page_bytes), dtype=torch.uint8)
            remote.buffer.fetch_rows(away, remote.stride, spec.page_bytes, rows, batching, 64 * 1024)
            assert torch.equal(rows, data)
            # what crossed is what a case records: whole pages per descriptor, as torch's messages
            want = messages(batching, n, spec.page_bytes, 64 * 1024) if batching != "per_page" else 1
            assert remote.buffer.last_descriptors == want, (fmt, batching)
            # the same rows again with fewer pages (a view of a registered tensor: no overlap refused)
            remote.buffer.fetch_rows(away[:3], remote.stride, spec.page_bytes, rows, "coalesced", 64 * 1024)
            assert torch.equal(rows[:3], data[:3])
            flat = torch.randint(0, 256, (3 * spec.page_bytes,), dtype=torch.uint8)
            remote.buffer.write_from(0, flat, 4096)
            got = torch.empty_like(flat)
            remote.buffer.read_into(0, got)
            assert torch.equal(got, flat)
            remote.close(), here.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_round_trips_are_bit_exact(transport):
    import torch.multiprocessing as mp

    from kvbench.launch import rendezvous_store

    store = rendezvous_store(30)
    mp.spawn(_rank_main, args=(store.port, transport), nprocs=2, join=True)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_two_rank_run_writes_paired_ceilings(transport, tmp_path):
    label = ENGINES[transport][1]
    work, tmp, env = _isolated(tmp_path)
    p = _kvbench("run", "--bench", "remote", "--ranks", "2", *SMALL, "--set", f"remote.transport={transport}",
                 "--cases", "^remote->dram/", "--cases", "^dram->remote/", "-o", "r.json", cwd=work, env=env)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "NIXL INFO" not in out + err  # NIXL's INFO lines (to stdout) are quietened
    doc = json.loads((work / "r.json").read_text())
    cases = {c["name"]: c for c in doc["cases"]}
    assert set(cases) == {f"{d}/layer/fp16/16tok/{b}" for d in ("remote->dram", "dram->remote")
                          for b in ("per_page", "grouped", "coalesced")}
    for name, c in cases.items():
        assert c["status"] == "ok", (name, c["reason"])
        cfg, m = c["config"], c["metrics"]
        assert cfg["transport"] == transport and cfg["engine"]["version"]
        assert m["gbps"] > 0 and m["ceiling_gbps"] > 0
        assert 0 < m["pct_of_ceiling"] == c["paired"]["pct_of_ceiling"]["median"]
        assert any("one-sided READs (fetch) and WRITEs (put)" in n for n in c["notes"])
        assert any(f"{label} descriptors per sample" in n for n in c["notes"])
        assert any(f"{label} stack" in n for n in c["notes"] if n.startswith("loopback"))
        if cfg["batching"] == "coalesced":
            assert cfg["messages"] == -(-cfg["bytes"] // cfg["chunk_bytes"])
        else:
            assert cfg["messages"] == cfg["pages"]
        # blocking engine calls per sample: one request, or one per page; Mooncake: batches of <= 1,024
        per_call = 1 if cfg["batching"] == "per_page" else cfg["messages"]
        limit = cfg["engine"].get("batch_limit") or per_call
        assert cfg["engine_calls"] == -(-cfg["messages"] // min(per_call, limit)), cfg
        assert cfg["engine"]["peer"] and f"in {cfg['engine_calls']:,} blocking engine call(s)" in " ".join(c["notes"])
    assert sorted(x.name for x in work.iterdir()) == ["r.json"] and list(tmp.iterdir()) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_killed_rank_ends_the_run_within_the_timeout(transport, tmp_path):
    work, tmp, env = _isolated(tmp_path)
    p = _kvbench("run", "--bench", "remote", "--ranks", "2", *SMALL, "--set", f"remote.transport={transport}",
                 "--dist-timeout", "3", "-o", "r.json", cwd=work, env=env)
    server, err = kill_rank_1_mid_run(p, work)
    assert p.returncode == 1, err
    assert f"kvbench: rank 1 (pid {server}) was killed by SIGKILL" in err and "Traceback" not in err
    doc = json.loads((work / "r.json").read_text())
    assert doc["cases"][0]["status"] == "ok"
    bad = next(c for c in doc["cases"] if c["status"] != "ok")
    assert "rank 1" in bad["reason"] and "\n" not in bad["reason"], bad["reason"]
    assert sorted(x.name for x in work.iterdir()) == ["r.json"] and list(tmp.iterdir()) == []


@pytest.mark.parametrize("transport", TRANSPORTS[:1])
def test_an_engine_that_cannot_start_skips_with_the_reason_and_exits_cleanly(transport, tmp_path):
    work, tmp, env = _isolated(tmp_path)
    env["UCX_TLS"] = ""  # UCX refuses an empty transport list: NIXL's UCX backend cannot start
    p = _kvbench("run", "--bench", "remote", "--ranks", "2", *SMALL, "--set", f"remote.transport={transport}",
                 "-o", "r.json", cwd=work, env=env)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "SIGSEGV" not in err and "Traceback" not in err, err
    doc = json.loads((work / "r.json").read_text())
    assert [(c["name"], c["status"]) for c in doc["cases"]] == [("*", "skipped")]
    why = doc["cases"][0]["reason"]
    assert why.startswith("NIXL could not start an agent with its UCX backend") and "UCX_TLS" in why, why
    assert sorted(x.name for x in work.iterdir()) == ["r.json"] and list(tmp.iterdir()) == []


@pytest.mark.skipif(bool(NO_TWO_HOSTS), reason=NO_TWO_HOSTS or "")
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_run_across_two_hosts(transport, tmp_path):
    with namespace_hosts() as two_hosts:
        doc = _on_both_hosts(two_hosts, tmp_path, "--bench", "remote", "--set", "remote.bytes=4MiB",
                             "--set", "remote.budget_s=0.3", "--cases", "^remote->dram/",
                             "--set", f"remote.transport={transport}")
    assert not doc["environment"]["distributed"]["loopback"]
    addresses = {addr for *_, addr in two_hosts}
    for c in doc["cases"]:
        assert c["status"] == "ok", c["reason"]
        engine = c["config"]["engine"]
        if transport == "mooncake":  # each session on its host's veth address, from GLOO_SOCKET_IFNAME
            assert engine["session_address_from"].startswith("GLOO_SOCKET_IFNAME=")
            assert {engine["session"].split(":")[0], engine["peer"].split(":")[0]} == addresses
        else:  # UCX may still pick shared memory between namespaces of one kernel: the note says it may
            assert any("shared memory" in n for n in c["notes"])
