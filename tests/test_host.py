"""Host mode (draft-hong-mif): the virtual interface over two physical interfaces, in the
host testbed (host - R1/R2 - peer), with real TCP and UDP through vi0."""
import json
import subprocess
import sys

import pytest

from engine.testbed import HOST, HOST_VI_ADDR, HOST_VI_ADDR4, PEER_ADDR, PEER_ADDR4, PEER_CORP_ADDR
from netlab import ROOT, in_ns, make_testbed, peer, running_mmr, start_peer, tcp_across

pytestmark = pytest.mark.privileged
VIA = {"eth1": "i1", "eth2": "i2"}          # the peer's ingress device -> the host interface used


@pytest.fixture(scope="module")
def bed():
    with make_testbed("h", HOST) as tb:
        yield tb


def host_mode(tb, *args):
    return running_mmr(tb, "host", "host", "vi0 up", *args)


def udp_via(tb, dst, port, svc, pref, n=10):
    sink = start_peer(tb, "peer", "udp-sink", port, 2)
    assert peer(tb, "host", "udp-send", dst, port, n, svc, pref).returncode == 0
    out, _ = sink.communicate(timeout=10)
    got = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(got) >= n - 1
    assert {g["src"] for g in got} == {HOST_VI_ADDR}          # the VI's address, whatever the path
    return {VIA[g["dev"]] for g in got}


def test_tcp_through_vi0_and_policy_per_flow(bed):
    with host_mode(bed):
        sink = start_peer(bed, "peer", "tcp-sink", 5401)
        r = peer(bed, "host", "tcp-send", PEER_ADDR, 5401, 3_000_000, timeout=60)
        sink.wait(timeout=10)
        res = json.loads(r.stdout)
        assert res["answer"] == res["expect"]
        assert udp_via(bed, PEER_ADDR, 9901, 3, 2) == {"i1"}     # video asking for QoS: i1 has it
        assert udp_via(bed, PEER_ADDR, 9902, -1, -1) == {"i2"}   # untagged, preference 3: shorter queue
        assert udp_via(bed, PEER_CORP_ADDR, 9903, -1, -1) == {"i2"}   # pinned by rule
        assert udp_via(bed, PEER_CORP_ADDR, 9904, 3, 2) == {"i2"}     # even asking for QoS
        st = subprocess.run(in_ns(bed, "host", sys.executable, "-m", "engine", "status", "--json"),
                            capture_output=True, text=True, cwd=ROOT, timeout=30)
        js = json.loads(st.stdout)
        assert js["mode"] == "host" and [u["name"] for u in js["uplinks"]] == ["i1", "i2"]
        assert all(u["usable"] for u in js["uplinks"])
        fl = subprocess.run(in_ns(bed, "host", sys.executable, "-m", "engine", "flows", "--json", "--uplink", "i1"),
                            capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert {f["dport"] for f in json.loads(fl.stdout)["flows"]} >= {9901}


def test_ipv4_through_vi0(bed):
    with host_mode(bed):
        out = bed.run("host", "ping", "-4", "-c", "3", "-i", "0.2", "-W", "2", PEER_ADDR4, check=False)
        assert out is not None and " 0% packet loss" in out, out
        st = subprocess.run(in_ns(bed, "host", sys.executable, "-m", "engine", "flows", "--json"),
                            capture_output=True, text=True, cwd=ROOT, timeout=30)
        flows = json.loads(st.stdout)["flows"]
        assert any(f["src"] == HOST_VI_ADDR4 and f["dst"] == PEER_ADDR4 for f in flows), flows


def test_interface_failure_moves_the_tcp_connection(bed, record_property):
    """A paced TCP transfer tagged for QoS runs via I1; I1 goes down mid-transfer; the same
    connection (same VI address) continues via I2 and completes with every byte."""
    with host_mode(bed):
        res, gap = tcp_across(bed, "host", "peer", PEER_ADDR, 5402, ("host", "ip", "link", "set", "i1", "down"),
                              ("host", "ip", "link", "set", "i1", "up"))
        assert res["answer"] == res["expect"]
        record_property("host_failover_gap_ms", gap)
        print(f"host mode: longest pause at the peer across the failover: {gap} ms")
        assert gap < 1000


def test_stop_restores_the_host(bed):
    routes_before = bed.run("host", "ip", "-6", "route")
    with host_mode(bed):
        assert "vi0" in bed.run("host", "ip", "link")
        assert "inet mmrhost" in bed.run("host", "nft", "list", "tables")
    assert "vi0" not in bed.run("host", "ip", "link")
    assert "mmrhost" not in bed.run("host", "nft", "list", "tables")
    assert bed.run("host", "ip", "-6", "route") == routes_before


def _bad(tb, tmp_path, edit):
    from engine.config import resources

    text = resources.files("engine").joinpath("default-host.toml").read_text()
    cfg = tmp_path / "h.toml"
    cfg.write_text(edit(text))
    return subprocess.run(in_ns(tb, "host", sys.executable, "-m", "engine", "host", "--config", str(cfg)),
                          capture_output=True, text=True, cwd=ROOT, timeout=30)


def test_bad_configuration_is_one_sentence(bed, tmp_path):
    p = _bad(bed, tmp_path, lambda t: t.replace('device = "i2"', 'device = "wlan9"'))
    assert p.returncode == 2 and "wlan9" in p.stderr and p.stderr.count("\n") == 1
    p = _bad(bed, tmp_path, lambda t: t.replace('"2001:db8:99::10/128"', '"2001:db8:b1::2/128"'))
    assert p.returncode == 2 and "already on i1" in p.stderr and p.stderr.count("\n") == 1
    bed.run("host", "ip", "link", "add", "name", "vi0", "type", "veth", "peer", "name", "vi0p")
    try:
        p = _bad(bed, tmp_path, lambda t: t)
        assert p.returncode == 2 and "already exists" in p.stderr and p.stderr.count("\n") == 1
    finally:
        bed.run("host", "ip", "link", "del", "vi0")
    assert "mmrhost" not in bed.run("host", "nft", "list", "tables")


def test_compiled_tun_is_loaded():
    from engine import _tun

    assert _tun.__file__.endswith(".so")


def test_no_tun_device_is_one_sentence(bed):
    """/dev/net/tun hidden in a private mount namespace: a clear sentence, nothing left behind."""
    p = subprocess.run(in_ns(bed, "host", "unshare", "-m", "sh", "-c",
                             f"mount -t tmpfs none /dev/net && exec {sys.executable} -m engine host"),
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert p.returncode == 2 and "/dev/net/tun" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert "vi0" not in bed.run("host", "ip", "link")
    assert "mmrhost" not in bed.run("host", "nft", "list", "tables")
