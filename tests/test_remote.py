"""The remote tier over 2 gloo ranks on this machine: bit-exact round trips through the
paged store, a short `kvbench run --bench remote --ranks 2` with its paired ceilings, a
rank killed mid-run ending the run within the timeout (no hang, no stray files), the
reasons given without a group, and bad launch input in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kvbench.errors import KvbenchError

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--quick", "--format", "fp16", "--layout", "layer", "--no-progress",
         "--set", "remote.bytes=4MiB", "--set", "remote.budget_s=0.3"]


# ------------------------------------------------------------------ two ranks in processes
def _rank_main(rank: int, port: int, nvme_dir: str) -> None:
    """One of two ranks (torch.multiprocessing.spawn): rank 1 serves, rank 0 round trips
    pages through the store to and from the remote tier and checks them bit-exact."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      TORCHELASTIC_USE_AGENT_STORE="True")
    from kvbench import distributed
    from kvbench.tiers.remote import stop_servers
    from kvbench.tiers.remote_server import serve

    distributed.init_group(20)
    try:
        idents = distributed.gather_identities()
        assert [i["rank"] for i in idents] == [0, 1] and len({i["pid"] for i in idents}) == 2
        if rank == 1:
            serve(client=0)
            return
        try:
            _round_trips(nvme_dir)
        finally:
            assert stop_servers() == []
    finally:
        distributed.close_group()


def round_trip(here, remote, n: int, rng, what) -> tuple:
    """n random pages written into ``here`` (a pool of 2n), moved into random pages of
    ``remote`` and back into the rest of ``here`` through the store, checked bit-exact;
    (the pages' bytes, their ids in ``remote``)."""
    from kvbench.store import move_pages

    data = torch.randint(0, 256, (n, here.page_bytes), dtype=torch.uint8)
    home, away = rng.sample(range(2 * n), n), rng.sample(range(2 * n), n)
    here.write_pages(home, data)
    move_pages(here, home, remote, away)
    back = [p for p in range(2 * n) if p not in home]
    move_pages(remote, away, here, back)
    assert torch.equal(here.read_pages(back), data), what
    return data, away


def _round_trips(nvme_dir: str) -> None:
    import random

    from kvbench.spec import PageSpec, get_format, load_model
    from kvbench.store import PagedKVStore, PagePool, move_pages
    from kvbench.tiers import DramTier, NvmeTier
    from kvbench.tiers.remote import RemoteTier

    model, rng = load_model("Llama-3.1-8B"), random.Random(0)
    # 64 KiB chunks: several coalesced messages per list, and pages larger than a chunk
    for fmt, layout, tokens in (("fp16", "layer", 16), ("nvfp4", "block", 4), ("fp8_e4m3", "layer", 64)):
        spec = PageSpec(model, get_format(fmt), tokens, layout)
        for batching in ("per_page", "grouped", "coalesced"):
            tier = RemoteTier(peer=1, batching=batching, chunk_bytes=64 * 1024)
            assert tier.available()[0] and tier.label.startswith("remote (host memory of rank 1")
            n = 10
            remote, here = PagePool(tier, spec, 2 * n), PagePool(DramTier(pinned=False), spec, 2 * n)
            assert remote.tensor is None and remote.through_buffer
            round_trip(here, remote, n, rng, (fmt, layout, batching))
            with pytest.raises(KvbenchError, match="no tensor view"):
                remote.payload()
            remote.close(), here.close()
    spec = PageSpec(model, get_format("fp16"), 16, "layer")
    nvme = NvmeTier(nvme_dir)
    pools = [PagePool(RemoteTier(), spec, 8), PagePool(nvme, spec, 8)]
    try:
        data = torch.randint(0, 256, (3, spec.page_bytes), dtype=torch.uint8)
        pools[1].write_pages([0, 4, 2], data)
        move_pages(pools[1], [0, 4, 2], pools[0], [7, 1, 3])  # nvme -> remote -> nvme
        move_pages(pools[0], [7, 1, 3], pools[1], [5, 6, 1])
        assert torch.equal(pools[1].read_pages([5, 6, 1]), data)
        a, b = PagedKVStore(pools[1], layers=1), PagedKVStore(pools[0], layers=1)
        a.add_sequence(0), a.append_tokens(0, 20)
        a.migrate(0, b)  # a sequence's pages move to the remote pool through the store
        assert b.seqs[0].tokens == 20 and pools[0].num_used == 2
    finally:
        for p in pools:
            p.close()
        nvme.close()


def test_round_trips_are_bit_exact_over_gloo(tmp_path):
    import torch.multiprocessing as mp

    from kvbench.launch import rendezvous_store

    store = rendezvous_store(30)
    mp.spawn(_rank_main, args=(store.port, str(tmp_path)), nprocs=2, join=True)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the CLI
def _kvbench(*args: str, cwd: Path, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kvbench", *args], cwd=cwd, env=env or dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _isolated(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A working folder and a TMPDIR of its own, both checked empty of strays after."""
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir(), tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(ROOT))
    env.pop("KVBENCH_NVME_DIR", None)
    return work, tmp, env


def test_a_two_rank_run_writes_paired_ceilings(tmp_path, capsys):
    work, tmp, env = _isolated(tmp_path)
    p = _kvbench("run", "--bench", "remote", "--ranks", "2", *SMALL, "--cases", "^remote->dram/",
                 "--cases", "^dram->remote/", "-o", "r.json", cwd=work, env=env)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    doc = json.loads((work / "r.json").read_text())
    assert doc["run"]["command"][:6] == ["kvbench", "run", "--bench", "remote", "--ranks", "2"]
    group = doc["environment"]["distributed"]
    assert group["world_size"] == 2 and group["loopback"] and group["link"].startswith("loopback")
    assert [r["rank"] for r in group["ranks"]] == [0, 1] and len({r["pid"] for r in group["ranks"]}) == 2
    assert group["launcher"] == "kvbench run --ranks 2" and group["backend"] == "gloo"
    cases = {c["name"]: c for c in doc["cases"]}
    assert set(cases) == {f"{d}/layer/fp16/16tok/{b}" for d in ("remote->dram", "dram->remote")
                          for b in ("per_page", "grouped", "coalesced")}
    for name, c in cases.items():
        assert c["status"] == "ok", (name, c["reason"])
        m, pair = c["metrics"], c["paired"]["pct_of_ceiling"]
        assert m["gbps"] > 0 and m["ceiling_gbps"] > 0 and 0 < m["pct_of_ceiling"] == pair["median"]
        assert pair["n"] >= 6 and pair["numerator"] == "paged" and pair["denominator"] == "ceiling"
        assert len(c["samples"]["gbps"]) == len(c["samples"]["ceiling_gbps"]) == pair["n"]
        cfg = c["config"]
        if cfg["batching"] == "coalesced":  # messages of the size the ceiling found fastest
            assert cfg["messages"] == -(-cfg["bytes"] // cfg["chunk_bytes"]) and cfg["transport"] == "torch"
            if cfg["ceiling"] != "contiguous, one message":
                assert cfg["ceiling"] == f"contiguous, {cfg['chunk_bytes'] >> 20} MiB messages"
                assert cfg["chunk_from"].startswith("the message size the contiguous ceiling found fastest")
        else:
            assert cfg["messages"] == cfg["pages"] and "chunk_bytes" not in cfg
        assert any(n.startswith("loopback:") for n in c["notes"])
        assert c["config"]["ceiling"].startswith("contiguous, ")  # the fastest message size, said
        one = c["config"]["ceiling"] == "contiguous, one message"
        assert one == ("pct_of_one_message" not in c["metrics"]), c["config"]["ceiling"]
    assert sorted(p.name for p in work.iterdir()) == ["r.json"] and list(tmp.iterdir()) == []
    from kvbench.cli import main

    assert main(["report", str(work / "r.json")]) == 0
    shown = capsys.readouterr().out
    assert "remote: 6 ok, 0 skipped, 0 errors" in shown and "pct_of_ceiling (%)" in shown
    assert "remote: paged transfers to and from a peer rank" in shown and "loopback" in shown


def _rank_pid(launcher: subprocess.Popen, rank: int, timeout_s: float = 60) -> int:
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in psutil.Process(launcher.pid).children():
            try:
                if child.environ().get("RANK") == str(rank):
                    return child.pid
            except psutil.Error:
                continue
        time.sleep(0.05)
    raise AssertionError(f"rank {rank} never started")


def kill_rank_1_mid_run(p: subprocess.Popen, work: Path) -> tuple[int, str]:
    """SIGKILL rank 1 of a 3 s-timeout remote run once rank 0 has written its first case;
    (its pid, the launcher's stderr), the run having ended within the timeout and a margin."""
    server = _rank_pid(p, 1)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # mid-run: after rank 0 finished its first case
        try:
            if any(c["bench"] == "remote" for c in json.loads((work / "r.json").read_text())["cases"]):
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    os.kill(server, signal.SIGKILL)
    killed = time.monotonic()
    _, err = p.communicate(timeout=60)
    assert time.monotonic() - killed < 3 + 15  # the timeout, start-up of nothing, a margin
    return server, err


def test_a_killed_rank_ends_the_run_within_the_timeout(tmp_path):
    work, tmp, env = _isolated(tmp_path)
    p = _kvbench("run", "--bench", "remote", "--ranks", "2", *SMALL, "--dist-timeout", "3", "-o", "r.json",
                 cwd=work, env=env)
    server, err = kill_rank_1_mid_run(p, work)
    assert p.returncode == 1, err
    assert f"kvbench: rank 1 (pid {server}) was killed by SIGKILL" in err
    assert "Traceback" not in err and "rank 1 stopped answering" in err
    doc = json.loads((work / "r.json").read_text())
    assert doc["cases"][0]["status"] == "ok"
    # the case in flight fails (or, killed while it freed its pool, the next ones skip)
    bad = next(c for c in doc["cases"] if c["status"] != "ok")
    assert "rank 1 stopped answering" in bad["reason"] and "\n" not in bad["reason"]
    after = doc["cases"][doc["cases"].index(bad) + 1:]
    assert after and all(c["status"] == "skipped" for c in after)
    assert all("failed earlier" in c["reason"] or "CUDA" in c["reason"] for c in after)
    assert sorted(x.name for x in work.iterdir()) == ["r.json"] and list(tmp.iterdir()) == []


# ------------------------------------------------------------------ without a group
def test_without_a_group_the_tier_and_the_benchmark_say_why(tmp_path, capsys):
    from kvbench.bench import DEFAULT_BENCHES, registry
    from kvbench.cli import main
    from kvbench.distributed import NO_GROUP
    from kvbench.tiers import make_tier

    tier = make_tier("remote")
    assert tier.remote and tier.host_memory and tier.available() == (False, NO_GROUP)
    assert "kvbench run --bench remote --ranks 2" in NO_GROUP and "torchrun" in NO_GROUP
    b = registry()["remote"]
    assert "remote" not in DEFAULT_BENCHES and b.distributed and b.headline == "gbps"
    out = tmp_path / "r.json"
    assert main(["run", "--bench", "remote", "-q", "-o", str(out), "--nvme-dir", str(tmp_path)]) == 0
    cases = json.loads(out.read_text())["cases"]
    assert [(c["name"], c["status"], c["reason"]) for c in cases] == [("*", "skipped", NO_GROUP)]


def test_the_plan_names_directions_batching_and_gpu_skips(tmp_path):
    from kvbench.bench import RunContext
    from kvbench.bench import remote as R
    from kvbench.spec import load_model

    ctx = RunContext(cuda=False, quick=True, model=load_model("Llama-3.1-8B"), formats=["fp16", "nvfp4"],
                     tokens_per_page=16, layouts=["layer", "block"], nvme_dir=tmp_path, warmup=0, samples=1)
    names = [c.name for c in R.plan(ctx)]
    assert "remote->dram/block/nvfp4/16tok/per_page" in names and "dram->remote/layer/fp16/16tok/coalesced" in names
    assert [n for n in names if n.startswith("sweep/")] == [f"sweep/remote->dram/layer/fp16/{t}tok/{b}"
                                                            for t in (16, 64, 256, 1024)
                                                            for b in ("per_page", "grouped", "coalesced")]
    gpu = {c.name: c.run(ctx) for c in R.plan(ctx) if "hbm" in c.name}
    assert set(gpu) == {"remote->hbm/*", "hbm->remote/*"}
    assert all(c["status"] == "skipped" and c["reason"].startswith("needs a CUDA device") for c in gpu.values())
    ctx.cuda = True  # with a device: every batching each way through pinned host memory, NCCL's skip
    gpu = [c.name for c in R.plan(ctx) if "hbm" in c.name]
    assert "remote->hbm/block/nvfp4/16tok/grouped" in gpu and "hbm->remote/layer/fp16/16tok/coalesced" in gpu
    assert len(gpu) == 2 * (2 * 2 * 3 + 1) and {"remote->hbm/nccl", "hbm->remote/nccl"} <= set(gpu)
    nccl = next(c for c in R.plan(ctx) if c.name == "remote->hbm/nccl").run(ctx)
    assert nccl["status"] == "skipped" and nccl["reason"] == R.NCCL_WHY and "not built" in R.NCCL_WHY
    ctx.options["remote.bytes"] = "lots"
    with pytest.raises(KvbenchError, match="remote.bytes"):
        R.plan(ctx)


def _hbm_end_rank(rank: int, port: int, nvme_dir: str) -> None:
    """Rank 0 runs the remote->hbm and hbm->remote cases with a host tier standing in for
    HBM (the composition of fetch, copy, scatter and their ceilings, checked bit-exact by
    the case itself); rank 1 serves."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      TORCHELASTIC_USE_AGENT_STORE="True")
    from kvbench import distributed
    from kvbench.bench import RunContext
    from kvbench.bench import remote as R
    from kvbench.bench.remote import hbm
    from kvbench.spec import load_model
    from kvbench.tiers import DramTier
    from kvbench.tiers.remote import stop_servers
    from kvbench.tiers.remote_server import serve

    distributed.init_group(20)
    try:
        if rank == 1:
            serve(client=0)
            return
        try:
            hbm.tier_or_skip = lambda name, ctx: DramTier(pinned=False)
            ctx = RunContext(cuda=False, quick=True, model=load_model("Llama-3.1-8B"), formats=["fp16"],
                             tokens_per_page=16, layouts=["layer"], nvme_dir=nvme_dir, warmup=0, samples=2,
                             options={"remote.bytes": "1MiB", "remote.budget_s": "0.1"})
            for d in ("remote->hbm", "hbm->remote"):
                for b in ("per_page", "coalesced"):
                    c = R.paged_case(ctx, d, "fp16", "layer", 16, b)
                    assert c["status"] == "ok" and c["config"]["path"] == hbm.PATH, (d, b, c.get("reason"))
                    assert any("pinned host memory" in n for n in c["notes"]) and c["metrics"]["gbps"] > 0
                    assert "the same one copy to or from HBM" in c["notes"][0]
        finally:
            assert stop_servers() == []
    finally:
        distributed.close_group()


def test_the_hbm_end_moves_pages_through_pinned_rows(tmp_path):
    import torch.multiprocessing as mp

    from kvbench.launch import rendezvous_store

    store = rendezvous_store(30)
    mp.spawn(_hbm_end_rank, args=(store.port, str(tmp_path)), nprocs=2, join=True)


def test_link_labels_loopback_and_reads_nic_speeds(tmp_path, monkeypatch):
    from kvbench import distributed

    for name, speed in (("lo", "0"), ("eth0", "25000"), ("eth1", "-1"), ("wlan0", "bad"), ("veth7", "10000")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "speed").write_text(speed)
    (tmp_path / "eth0" / "device").mkdir()  # a physical NIC has a device behind it
    eth0 = {"iface": "eth0", "speed_mbps": 25000, "gbps": 3.125, "virtual": False}
    veth = {"iface": "veth7", "speed_mbps": 10000, "gbps": 1.25, "virtual": True}
    assert distributed.nic_speeds(tmp_path) == [eth0, veth]
    monkeypatch.setattr(distributed, "nic_speeds", lambda root=None: [eth0, veth])
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    one = distributed.link_block([{"hostname": "a", "rank": 0}, {"hostname": "a", "rank": 1}])
    two = distributed.link_block([{"hostname": "a", "rank": 0}, {"hostname": "b", "rank": 1}])
    assert one["loopback"] and "no NIC in the path" in one["link"]
    assert not two["loopback"] and "fastest NIC here eth0 at 25,000 Mb/s" in two["link"]
    assert distributed.link_nic(two) == (eth0, "")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "veth7")  # gloo told to use the virtual one: no % of a NIC
    told = distributed.link_block([{"hostname": "a", "rank": 0}, {"hostname": "b", "rank": 1}])
    assert told["socket_ifname"] == "veth7" and "veth7 is virtual" in told["link"]
    assert distributed.link_nic(told)[0] is None and "bounds nothing" in distributed.link_nic(told)[1]


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("args,says", [
    (["--ranks", "0"], "argument --ranks: must be positive"),
    (["--ranks", "two"], "argument --ranks: not an integer"),
    (["--ranks", "1000"], "--ranks 1000: at most 64 ranks on one machine"),
    (["--ranks", "2", "--bench", "accuracy"], "a multi-rank run runs only the benchmarks that use the group"),
    (["--dist-timeout", "0"], "argument --dist-timeout: must be a positive number"),
])
def test_bad_launch_input_exits_2_in_one_line(args, says, capsys):
    from kvbench.cli import main

    try:
        rc = main(["run", *args] if "--bench" in args else ["run", "--bench", "remote", *args])
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and says in err and "Traceback" not in err, err


def test_ranks_must_match_the_launcher(monkeypatch, capsys):
    from kvbench.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", "--bench", "remote", "--ranks", "3"]) == 2
    assert "--ranks 3 under a launcher of $WORLD_SIZE=2 ranks" in capsys.readouterr().err


def test_round_trips_cover_the_remote_tier_in_a_launch_and_say_why_alone(tmp_path):
    work, tmp, env = _isolated(tmp_path)
    p = _kvbench("run", "--bench", "roundtrip", "--ranks", "2", "--quick", "--layout", "layer", "--no-progress",
                 "-o", "rt.json", cwd=work, env=env)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    cases = {c["name"]: c for c in json.loads((work / "rt.json").read_text())["cases"]}
    for pair in ("dram<->remote/layer", "nvme<->remote/layer"):
        assert cases[pair]["status"] == "ok" and cases[pair]["metrics"]["pages_verified"] > 0, cases[pair]
        assert cases[pair]["config"]["dst_label"].startswith("remote (host memory of rank 1")
    assert cases["dram<->nvme/layer"]["status"] == "ok"  # the local pairs run beside them
    from kvbench.distributed import NO_GROUP

    p = _kvbench("run", "--bench", "roundtrip", "--quick", "--layout", "layer", "--no-progress", "-o", "alone.json",
                 cwd=work, env=env)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    alone = {c["name"]: c for c in json.loads((work / "alone.json").read_text())["cases"]}
    assert alone["dram<->remote/layer"]["status"] == "skipped"
    assert alone["dram<->remote/layer"]["reason"] == f"tier remote unavailable: {NO_GROUP}"
    assert sorted(x.name for x in work.iterdir()) == ["alone.json", "rt.json"] and list(tmp.iterdir()) == []
