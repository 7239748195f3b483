"""The remote tier with NIXL moving the bytes (``--set remote.transport=nixl``), over 2
ranks on this machine: bit-exact round trips through the paged store for every batching,
a short `kvbench run --bench remote --ranks 2` with its paired ceilings and what it
records of NIXL, and a rank killed mid-run ending the run within the timeout.

Needs NIXL's Python package (pip install nixl); where it is missing every test here skips
saying so (.ci/run runs this file in a venv that has it, where a skip fails CI)."""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("nixl._api", reason="NIXL's Python package is not installed (pip install nixl)")

from test_remote import SMALL, _isolated, _kvbench, kill_rank_1_mid_run  # noqa: E402 - after the skip

NIXL = ["--set", "remote.transport=nixl"]


def _nixl_rank(rank: int, port: int) -> None:
    """One of two ranks (torch.multiprocessing.spawn): rank 1 serves, rank 0 moves pages
    through the store to and from a NIXL remote pool and checks them bit-exact. Ends
    through remote_nixl.exit_process (NIXL's wheel crashes in the C library's exit)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      TORCHELASTIC_USE_AGENT_STORE="True")
    from kvbench import distributed
    from kvbench.tiers import remote_nixl
    from kvbench.tiers.remote import stop_servers
    from kvbench.tiers.remote_server import serve

    distributed.init_group(20)
    try:
        distributed.gather_identities()
        if rank == 1:
            serve(client=0)
        else:
            try:
                _nixl_round_trips()
            finally:
                assert stop_servers() == []
    finally:
        distributed.close_group()
    remote_nixl.exit_process(0)


def _nixl_round_trips() -> None:
    import random

    from kvbench.spec import PageSpec, get_format, load_model
    from kvbench.store import PagePool, move_pages
    from kvbench.tiers import DramTier
    from kvbench.tiers.remote import messages
    from kvbench.tiers.remote_nixl import NixlBuffer, NixlRemoteTier

    model, rng = load_model("Llama-3.1-8B"), random.Random(0)
    for fmt, layout, tokens in (("fp16", "layer", 16), ("nvfp4", "block", 4), ("fp8_e4m3", "layer", 64)):
        spec = PageSpec(model, get_format(fmt), tokens, layout)
        for batching in ("per_page", "grouped", "coalesced"):
            tier = NixlRemoteTier(peer=1, batching=batching, chunk_bytes=64 * 1024)
            assert tier.available()[0] and "NIXL UCX" in tier.label
            n = 10
            remote, here = PagePool(tier, spec, 2 * n), PagePool(DramTier(pinned=False), spec, 2 * n)
            assert isinstance(remote.buffer, NixlBuffer)
            data = torch.randint(0, 256, (n, spec.page_bytes), dtype=torch.uint8)
            home, away = rng.sample(range(2 * n), n), rng.sample(range(2 * n), n)
            here.write_pages(home, data)
            move_pages(here, home, remote, away)
            back = [p for p in range(2 * n) if p not in home]
            move_pages(remote, away, here, back)
            assert torch.equal(here.read_pages(back), data), (fmt, layout, batching)
            assert remote.buffer._local == {}  # the store's one-off tensors were let go
            # the bench's own path: rows kept registered, the ceiling's contiguous bytes
            rows = torch.empty((n, spec.page_bytes), dtype=torch.uint8)
            remote.buffer.fetch_rows(away, remote.stride, spec.page_bytes, rows, batching, 64 * 1024)
            assert torch.equal(rows, data)
            # what crossed is what a case records: whole pages per descriptor, as torch's messages
            want = messages(batching, n, spec.page_bytes, 64 * 1024) if batching != "per_page" else 1
            assert remote.buffer.last_descriptors == want, (fmt, batching)
            flat = torch.randint(0, 256, (3 * spec.page_bytes,), dtype=torch.uint8)
            remote.buffer.write_from(0, flat, 4096)
            got = torch.empty_like(flat)
            remote.buffer.read_into(0, got)
            assert torch.equal(got, flat)
            remote.close(), here.close()


def test_round_trips_are_bit_exact_over_nixl():
    import torch.multiprocessing as mp

    from kvbench.launch import rendezvous_store

    store = rendezvous_store(30)
    mp.spawn(_nixl_rank, args=(store.port,), nprocs=2, join=True)


def test_a_two_rank_nixl_run_writes_paired_ceilings(tmp_path):
    work, tmp, env = _isolated(tmp_path)
    p = _kvbench("run", "--bench", "remote", "--ranks", "2", *SMALL, *NIXL, "--cases", "^remote->dram/",
                 "--cases", "^dram->remote/", "-o", "r.json", cwd=work, env=env)
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
        assert cfg["transport"] == "nixl" and cfg["nixl"]["backend"] == "UCX" and cfg["nixl"]["version"]
        assert m["gbps"] > 0 and m["ceiling_gbps"] > 0 and 0 < m["pct_of_ceiling"] == c["paired"]["pct_of_ceiling"]["median"]
        assert any(n.startswith("NIXL over UCX") for n in c["notes"])
        assert any("NIXL descriptors per sample" in n for n in c["notes"])
        assert any("NIXL/UCX stack" in n for n in c["notes"] if n.startswith("loopback"))
        if cfg["batching"] == "coalesced":
            assert cfg["messages"] == -(-cfg["bytes"] // cfg["chunk_bytes"])
        else:
            assert cfg["messages"] == cfg["pages"]
    assert sorted(x.name for x in work.iterdir()) == ["r.json"] and list(tmp.iterdir()) == []


def test_a_killed_rank_ends_a_nixl_run_within_the_timeout(tmp_path):
    work, tmp, env = _isolated(tmp_path)
    p = _kvbench("run", "--bench", "remote", "--ranks", "2", *SMALL, *NIXL, "--dist-timeout", "3", "-o", "r.json",
                 cwd=work, env=env)
    server, err = kill_rank_1_mid_run(p, work)
    assert p.returncode == 1, err
    assert f"kvbench: rank 1 (pid {server}) was killed by SIGKILL" in err and "Traceback" not in err
    doc = json.loads((work / "r.json").read_text())
    assert doc["cases"][0]["status"] == "ok"
    bad = next(c for c in doc["cases"] if c["status"] != "ok")
    assert "rank 1" in bad["reason"] and "\n" not in bad["reason"], bad["reason"]
    assert sorted(x.name for x in work.iterdir()) == ["r.json"] and list(tmp.iterdir()) == []


def test_an_agent_that_cannot_start_skips_with_the_reason_and_exits_cleanly(tmp_path):
    work, tmp, env = _isolated(tmp_path)
    env["UCX_TLS"] = ""  # UCX refuses an empty transport list: NIXL's UCX backend cannot start
    p = _kvbench("run", "--bench", "remote", "--ranks", "2", *SMALL, *NIXL, "-o", "r.json", cwd=work, env=env)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "SIGSEGV" not in err and "Traceback" not in err, err
    doc = json.loads((work / "r.json").read_text())
    assert [(c["name"], c["status"]) for c in doc["cases"]] == [("*", "skipped")]
    why = doc["cases"][0]["reason"]
    assert why.startswith("NIXL could not start an agent with its UCX backend") and "UCX_TLS" in why, why
    assert sorted(x.name for x in work.iterdir()) == ["r.json"] and list(tmp.iterdir()) == []
