"""The live router in the draft's testbed: real namespaces, veths, packets and kernel peers.

Every test module builds its own testbed with a unique prefix and removes it even when a
test fails; traffic goes only to addresses inside those namespaces.
"""
import json
import subprocess
import sys

import pytest

from engine.config import load_config
from engine.testbed import CN_ADDR
from netlab import ROOT, in_ns, peer, running_router, start_peer, make_testbed, udp_exchange

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def testbed():
    with make_testbed("r") as tb:
        yield tb


@pytest.fixture(scope="module")
def router(testbed):
    """One ``mmr run`` in the MMR namespace for all the forwarding tests of this module."""
    with running_router(testbed) as (p, _):
        yield p


def expected_uplink(service, preference):
    from engine import _select

    cfg = load_config(None)
    table = _select.Selector(cfg).choice_table()
    return cfg.uplinks[table[preference, service]].name


AR_OF_CN_DEV = {"eth1": "ar1", "eth2": "ar2"}


def test_ping6_through_mmr(testbed, router):
    out = testbed.run("mn", "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", CN_ADDR)
    assert " 0% packet loss" in out


def test_kernel_does_not_forward_while_mmr_runs(testbed, router):
    tables = testbed.run("mmr", "nft", "list", "tables")
    assert "inet mmr" in tables


@pytest.mark.parametrize("svc,pref", [(3, 2), (2, 2), (0, 3), (0, 1), (1, 1), (3, 0), (0, 4)])
def test_tagged_flows_follow_the_policy(testbed, router, svc, pref):
    got = udp_exchange(testbed, 7000 + svc * 10 + pref, svc, pref)
    assert len(got) >= 18                         # a couple may race the first ND exchange
    ars = {AR_OF_CN_DEV[g["dev"]] for g in got}
    if pref == 3:       # load balancing: the flow's uplink is its turn in the weighted rotation
        assert len(ars) == 1 and ars <= {"ar1", "ar2"}
    else:
        assert ars == {expected_uplink(svc, pref)}


def test_draft_section_6_2_outcome(testbed, router):
    video = udp_exchange(testbed, 7100, 3, 2)        # tagged video, preference QoS
    echo = udp_exchange(testbed, 7101, -1, -1)       # untagged
    assert {AR_OF_CN_DEV[g["dev"]] for g in video} == {"ar1"}
    assert {AR_OF_CN_DEV[g["dev"]] for g in echo} == {"ar2"}


def test_untagged_traffic_follows_rules(testbed, router):
    sip = udp_exchange(testbed, 5060, -1, -1)        # rule: udp/5060 -> voip, preference 2
    assert {AR_OF_CN_DEV[g["dev"]] for g in sip} == {expected_uplink(2, 2)} == {"ar1"}


def test_hop_limit_is_decremented_by_mmr(testbed, router):
    got = udp_exchange(testbed, 7200, 0, 3, n=5)
    # sent with 64: mmr takes one, the AR one
    assert {g["hlim"] for g in got} == {62}


def test_hop_limit_1_gets_time_exceeded(testbed, router):
    p = subprocess.run(["ip", "netns", "exec", testbed.ns("mn"), "ping", "-6", "-c", "1", "-t", "1",
                        "-W", "2", CN_ADDR], capture_output=True, text=True)
    assert "Time exceeded" in p.stdout or "Time to live exceeded" in p.stdout, p.stdout
    assert "2001:db8:1::1" in p.stdout


def test_hop_limit_runs_out_towards_the_lan_too(testbed, router):
    """From CN with hop limit 2: the AR takes one, mmr finds 1 left on its uplink and answers
    from that uplink's address instead of passing the packet to the LAN."""
    from engine.testbed import MN_ADDR

    p = subprocess.run(["ip", "netns", "exec", testbed.ns("cn"), "ping", "-6", "-c", "1", "-t", "2",
                        "-W", "2", MN_ADDR], capture_output=True, text=True)
    assert "Time exceeded" in p.stdout, p.stdout
    assert "2001:db8:a1::2" in p.stdout or "2001:db8:a2::2" in p.stdout, p.stdout


def counters(testbed):
    p = subprocess.run(in_ns(testbed, "mmr", sys.executable, "-m", "engine", "status", "--json"),
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["counters"]


def test_the_links_run_the_kernels_default_offloads(testbed):
    """The lab is not kinder than the world: MN's sender hands its link unfinished checksums
    and TCP super-frames, as a host with TX offloads (a VM's virtio-net) does."""
    out = testbed.run("mn", "ethtool", "-k", "eth0")
    for feature in ("tx-checksumming: on", "tcp-segmentation-offload: on", "generic-segmentation-offload: on"):
        assert feature in out, feature


def test_tcp_transfer_completes_with_every_byte(testbed, router):
    """TCP from a sender with TSO: super-frames cross mmr (segmented by the kernel on the
    way out) and every byte arrives."""
    before = counters(testbed)
    sink = start_peer(testbed, "cn", "tcp-sink", 5201)
    r = peer(testbed, "mn", "tcp-send", CN_ADDR, 5201, 4_000_000, timeout=60)
    sink.wait(timeout=10)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["answer"] == res["expect"]
    after = counters(testbed)
    assert after["super_frames"] > before["super_frames"]
    assert after["tx_errors"] == before["tx_errors"] and after["oversize"] == before["oversize"]


def test_unfinished_udp_checksums_are_finished(testbed, router):
    """Datagrams whose checksum MN's stack left to the device arrive at CN (whose stack
    checks them) because mmr finished them.  Untagged: with an extension header (the
    option) Linux finishes UDP checksums itself."""
    before = counters(testbed)["csum_finished"]
    got = udp_exchange(testbed, 7300, -1, -1, n=20)
    assert len(got) >= 18
    assert counters(testbed)["csum_finished"] - before >= 18


def test_ipv4_ping_through_mmr(testbed, router):
    out = testbed.run("mn", "ping", "-c", "4", "-i", "0.3", "-W", "2", "198.51.100.1", check=False)
    assert out is not None and "packet loss" in out
    assert " 0% packet loss" in out or " 25% packet loss" in out   # the first may wait for ARP


