"""The remote benchmark's options and its results downstream: optional transports
(``--set remote.transport=nixl|mooncake`` skips with the reason where the package is not
importable, and mooncake where it is, its transport not being built; an unknown one is bad input, refused before any rank starts), and
``kvbench compare`` of two remote results (two tiny 2-rank gloo runs)."""

from __future__ import annotations

import json

import pytest

TINY = ["--quick", "--format", "fp16", "--layout", "layer", "--no-progress", "--set", "remote.bytes=2MiB",
        "--set", "remote.budget_s=0.2", "--cases", "^remote->dram/"]


@pytest.mark.parametrize("name,module", [("nixl", "nixl._api"), ("mooncake", "mooncake.engine")])
def test_a_transport_whose_package_is_missing_skips_the_run_with_the_reason(name, module, tmp_path, monkeypatch):
    import importlib.util

    from kvbench.cli import main
    from kvbench.tiers.remote import RemoteTier, transport_status

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == module else real(m, *a))
    ok, why = transport_status(name)
    assert not ok and f"remote.transport={name}" in why and f"{module}" in why and "not importable" in why
    assert "the same cases and ceilings would run over it" in why
    assert RemoteTier(transport=name).available() == (False, why)  # before the group is asked
    out = tmp_path / "r.json"
    assert main(["run", "--bench", "remote", "--set", f"remote.transport={name}", "-q", "-o", str(out),
                 "--nvme-dir", str(tmp_path)]) == 0
    cases = json.loads(out.read_text())["cases"]
    assert [(c["name"], c["status"], c["reason"]) for c in cases] == [("*", "skipped", why)]


def test_an_importable_transport_gets_its_own_tier(monkeypatch):
    import importlib.util

    from kvbench.bench.remote import remote_tier
    from kvbench.tiers.remote import TRANSPORTS, RemoteTier, transport_status

    assert list(TRANSPORTS) == ["torch", "nixl", "mooncake"] and transport_status("torch")[0]
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: object())
    assert transport_status("nixl") == (True, "NIXL")
    assert transport_status("mooncake") == (True, "Mooncake's transfer engine")
    for name in ("nixl", "mooncake"):
        # an engine's bytes never cross over torch.distributed under its name: its own tier class does it
        ok, why = RemoteTier(transport=name).available()
        assert not ok and f"the {name} transport has its own tier class" in why
        tier = remote_tier(1, "coalesced", 1 << 20, name)
        assert type(tier).__name__ == "OneSidedTier" and tier.transport == name

    def broken(m, *a):
        raise ImportError("libucs.so.0: cannot open shared object file")
    monkeypatch.setattr(importlib.util, "find_spec", broken)
    assert "nixl._api cannot be imported: libucs.so.0" in transport_status("nixl")[1]


def test_an_unknown_transport_is_refused_before_the_ranks_start(capsys):
    from kvbench.cli import main

    assert main(["run", "--bench", "remote", "--ranks", "2", "--set", "remote.transport=ucx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--set remote.transport=ucx: unknown; known: torch, nixl, mooncake" in err


def test_compare_reads_two_remote_results(isolated_cli):
    work = isolated_cli.work
    for name in ("a.json", "b.json"):
        p = isolated_cli(["run", "--bench", "remote", "--ranks", "2", *TINY, "-q", "-o", name], COLUMNS="200")
        assert p.returncode == 0, p.stderr
    c = isolated_cli(["compare", "a.json", "b.json"], COLUMNS="200")
    assert c.returncode == 0, c.stderr
    for b in ("per_page", "grouped", "coalesced"):
        assert f"remote->dram/layer/fp16/16tok/{b}" in c.stdout
    assert "remote / paged: gbps (GB/s)" in c.stdout
    assert "ranks, link" in c.stdout and "loopback" in c.stdout
    assert sorted(x.name for x in work.iterdir()) == ["a.json", "b.json"] and list(isolated_cli.tmp.iterdir()) == []
