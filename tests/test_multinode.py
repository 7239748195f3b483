"""Two hosts on one machine: the README's across-machines command run for real. Two network
namespaces joined by a veth pair, each with a hostname of its own (a UTS namespace) and
an /etc/hosts naming both (``ip netns exec`` binds /etc/netns/NAME/hosts over it); in
each, one torchrun with c10d rendezvous at the first "node"'s address, gloo told to use
the veth (GLOO_SOCKET_IFNAME). The result must say two hosts, not loopback, and that the
veth's nominal speed bounds nothing.

Needs root, iproute2's ``ip`` and util-linux's ``unshare``; without them the test skips
saying so (KVBENCH_REQUIRE_NETNS=1, as .ci/run sets, makes that a failure)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TAG = f"kvb{os.getpid() % 100000}"
NET = f"10.213.{os.getpid() % 250}"


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def _why_not() -> str:
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [t for t in ("ip", "unshare") if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)} (iproute2, util-linux)"
    probe = _run("ip", "netns", "add", f"{TAG}p")
    if probe.returncode:
        return f"ip netns add refused: {probe.stderr.strip()}"
    _run("ip", "netns", "del", f"{TAG}p")
    return ""


WHY = _why_not()
if WHY and os.environ.get("KVBENCH_REQUIRE_NETNS") == "1":
    raise RuntimeError(f"KVBENCH_REQUIRE_NETNS=1 but two hosts cannot be made here: {WHY}")
pytestmark = pytest.mark.skipif(bool(WHY), reason=WHY or "")


@contextlib.contextmanager
def namespace_hosts():
    """(namespace, hostname, veth, address) of each "node"; everything removed after."""
    nodes = [(f"{TAG}{x}", f"node-{x}", f"{TAG}v{x}", f"{NET}.{i + 1}") for i, x in enumerate("ab")]
    try:
        for ns, *_ in nodes:
            assert _run("ip", "netns", "add", ns).returncode == 0
            hosts = Path("/etc/netns") / ns
            hosts.mkdir(parents=True, exist_ok=True)
            (hosts / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"{a} {h}\n" for _, h, _, a in nodes))
        (_, _, va, _), (_, _, vb, _) = nodes
        assert _run("ip", "link", "add", va, "type", "veth", "peer", "name", vb).returncode == 0
        for ns, _, veth, addr in nodes:
            for cmd in (["ip", "link", "set", veth, "netns", ns],
                        ["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", veth],
                        ["ip", "-n", ns, "link", "set", "lo", "up"], ["ip", "-n", ns, "link", "set", veth, "up"]):
                done = _run(*cmd)
                assert done.returncode == 0, (cmd, done.stderr)
        yield nodes
    finally:
        for ns, *_ in nodes:
            _run("ip", "netns", "del", ns)  # takes its end of the veth pair with it
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


@pytest.fixture
def two_hosts():
    with namespace_hosts() as nodes:
        yield nodes


def _on_both_hosts(two_hosts, tmp_path: Path, *kvbench_args: str) -> dict:
    """One torchrun per host with c10d rendezvous at the first host's address, each
    running ``kvbench run ...kvbench_args -o r.json``; the result (written by rank 0)
    once both have exited 0, nothing of kvbench's left in TMPDIR."""
    out, tmp = tmp_path / "r.json", tmp_path / "tmp"
    tmp.mkdir()
    endpoint = f"{two_hosts[0][3]}:29577"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp))
    env.pop("KVBENCH_NVME_DIR", None)
    procs = []
    for ns, host, veth, addr in two_hosts:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                    "--rdzv-id", TAG, "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--local-addr", addr,
                    "-m", "kvbench", "run", *kvbench_args, "--quick", "--format", "fp16", "--layout", "layer",
                    "--no-progress", "--dist-timeout", "30", "-o", str(out)]
        script = f'hostname {host} && GLOO_SOCKET_IFNAME={veth} exec "$@"'
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c", script, "sh",
                                       *torchrun], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    # nothing of kvbench's left behind (torchrun leaves its own torchelastic_* log folders)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.json", "tmp"]
    assert [x.name for x in tmp.iterdir() if not x.name.startswith("torchelastic_")] == []
    return json.loads(out.read_text())


def test_torchrun_across_two_hosts_records_both_and_the_virtual_link(two_hosts, tmp_path):
    doc = _on_both_hosts(two_hosts, tmp_path, "--bench", "remote", "--set", "remote.bytes=4MiB",
                         "--set", "remote.budget_s=0.3", "--cases", "^remote->dram/")
    group = doc["environment"]["distributed"]
    assert group["launcher"] == "torchrun" and group["world_size"] == 2 and not group["loopback"]
    assert group["hosts"] == ["node-a", "node-b"] and {r["hostname"] for r in group["ranks"]} == {"node-a", "node-b"}
    assert group["socket_ifname"] in {v for _, _, v, _ in two_hosts}
    assert "is virtual" in group["link"] and group["link"].startswith("network: 2 hosts")
    assert [n["virtual"] for n in group["nics"]] == [True]  # the veth, the only interface in the namespace
    cases = doc["cases"]
    assert {c["name"] for c in cases} == {f"remote->dram/layer/fp16/16tok/{b}" for b in ("per_page", "grouped", "coalesced")}
    for c in cases:
        assert c["status"] == "ok", c["reason"]
        assert "pct_of_nic" not in c["metrics"] and not c["config"]["loopback"]
        assert any("is virtual (no device behind it)" in n for n in c["notes"])
        assert not any(n.startswith("loopback") for n in c["notes"])


def test_a_fleet_run_across_two_hosts_gives_one_result_per_host(two_hosts, tmp_path):
    doc = _on_both_hosts(two_hosts, tmp_path, "--fleet", "--bench", "roundtrip", "--set", "roundtrip.pages=8")
    assert doc["run"]["status"] == "complete" and not doc["environment"]["distributed"]["loopback"]
    ranks = doc["fleet"]["ranks"]
    assert [r["status"] for r in ranks] == ["ok", "ok"]
    # each host's own result carries its own identity
    assert sorted(r["environment"]["host"]["hostname"] for r in ranks) == ["node-a", "node-b"]
    ok = {c["name"] for c in doc["cases"] if c["status"] == "ok"}
    assert {"rank0/dram<->nvme/layer", "rank1/dram<->nvme/layer"} <= ok
    assert any(row["name"] == "dram<->nvme/layer" and set(row["values"]) == {"0", "1"} for row in doc["fleet"]["spread"])
