"""A silent kernel: while mmr runs, the router's own kernel neither forwards, nor answers,
nor duplicates the transit packets mmr forwards, whatever routes the router has: a default
route via the uplink mmr does not choose, none at all, or one via the other uplink.  What is
for the router itself still reaches its kernel (ping and TCP to its addresses).

The router's kernel is watched with nftables counters of its own: at the forward hook
(anything it forwarded) and at the output hook (ICMP errors and redirects it sent; mmr's own
ICMP errors leave through AF_PACKET and never pass there).  The links keep the kernel's
default offloads."""
import json
import subprocess

import pytest

from engine.testbed import CN_ADDR, CN_ADDR4, MN_ADDR
from netlab import make_testbed, peer, running_router, start_peer, udp_exchange

pytestmark = pytest.mark.privileged

WATCH = """table inet watch {
 chain out {
  type filter hook output priority 0; policy accept;
  icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, nd-redirect } counter comment "icmp6"
  icmp type { destination-unreachable, time-exceeded, redirect, parameter-problem } counter comment "icmp4"
 }
 chain transit {
  type filter hook forward priority 0; policy accept;
  counter comment "forwarded"
 }
}
"""

ROUTES = {
    "default via up2": [],                                            # as the testbed builds it
    "no route": [["-6", "route", "del", "default"], ["-4", "route", "del", "default"]],
    "default via up1": [["-6", "route", "replace", "default", "via", "2001:db8:a1::1", "dev", "up1"],
                        ["-4", "route", "replace", "default", "via", "198.18.1.1"]],
}
RESTORE = [["-6", "route", "replace", "default", "via", "2001:db8:a2::1", "dev", "up2"],
           ["-4", "route", "replace", "default", "via", "198.18.2.1"]]
AR_OF_CN_DEV = {"eth1": "ar1", "eth2": "ar2"}


@pytest.fixture(scope="module")
def testbed():
    with make_testbed("k") as tb:
        yield tb


def watch(tb) -> dict:
    out = tb.run("mmr", "nft", "-j", "list", "table", "inet", "watch")
    got = {}
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if rule:
            for e in rule["expr"]:
                if "counter" in e:
                    got[rule["comment"]] = int(e["counter"]["packets"])
    return got


@pytest.fixture(params=list(ROUTES), ids=list(ROUTES))
def routed(request, testbed):
    for r in ROUTES[request.param]:
        testbed.run("mmr", "ip", *r)
    subprocess.run(["ip", "netns", "exec", testbed.ns("mmr"), "nft", "-f", "-"], input=WATCH, text=True, check=True)
    try:
        yield request.param
    finally:
        testbed.run("mmr", "nft", "delete", "table", "inet", "watch", check=False)
        for r in RESTORE:
            testbed.run("mmr", "ip", *r, check=False)


def tcp_transfer(tb, svc, pref, port):
    sink = start_peer(tb, "cn", "tcp-sink", port)
    r = peer(tb, "mn", "tcp-send", CN_ADDR, port, 3_000_000, svc, pref, timeout=60)
    sink.wait(timeout=10)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["answer"] == res["expect"]               # every byte, in order


def test_transit_is_mmrs_alone(testbed, routed):
    with running_router(testbed):
        tcp_transfer(testbed, 3, 2, 5501)               # tagged video/QoS: via ar1
        tcp_transfer(testbed, -1, -1, 5502)             # untagged: load balanced (weights 20:50)
        video = udp_exchange(testbed, 7501, 3, 2)
        data = udp_exchange(testbed, 7502, -1, -1)
        assert {AR_OF_CN_DEV[g["dev"]] for g in video} == {"ar1"} and len(video) >= 18
        # the second load-balanced flow: its turn in the rotation, one uplink for all its packets
        assert len({AR_OF_CN_DEV[g["dev"]] for g in data}) == 1 and len(data) >= 18
        out4 = testbed.run("mn", "ping", "-4", "-c", "3", "-i", "0.2", "-W", "2", CN_ADDR4)
        assert " 0% packet loss" in out4
        counts = watch(testbed)
    assert counts == {"icmp6": 0, "icmp4": 0, "forwarded": 0}, (routed, counts)


def test_the_router_itself_still_answers(testbed, routed):
    """Neighbour discovery, ping and TCP to the router's own addresses (LAN side and uplink
    side) reach its kernel while mmr runs."""
    with running_router(testbed):
        for addr in ("2001:db8:1::1", "2001:db8:a2::2", "192.0.2.1"):
            out = testbed.run("mn", "ping", "-c", "2", "-i", "0.2", "-W", "2", addr, check=False)
            assert out is not None and " 0% packet loss" in out, (addr, out)
        sink = start_peer(testbed, "mmr", "tcp-sink", 5522)
        r = peer(testbed, "mn", "tcp-send", "2001:db8:1::1", 5522, 500_000, timeout=60)
        sink.wait(timeout=10)
        res = json.loads(r.stdout)
        assert res["answer"] == res["expect"]
        counts = watch(testbed)
    assert counts["forwarded"] == 0, counts
    assert MN_ADDR                                     # (the LAN host the router answered)


AR_WATCH = """table inet leak {
 chain pre {
  type filter hook prerouting priority -300; policy accept;
  iifname "eth0" ip6 daddr 2001:db8:d::/64 counter comment "to-dmz"
 }
}
"""


def test_the_routers_other_networks_stay_the_kernels(testbed):
    """The MMR has a third network of its own (a DMZ on dmz0, not an mmr device), routed by
    its kernel: LAN <-> DMZ and ISP -> DMZ keep working while mmr runs, and nothing for the
    DMZ is sent out an uplink (counters on the ARs' MMR-side ports)."""
    dmz = testbed.ns("dmz")
    subprocess.run(["ip", "netns", "add", dmz], check=True)
    try:
        testbed.run("mmr", "ip", "link", "add", "dmz0", "type", "veth", "peer", "name", "eth0", "netns", dmz)
        testbed.run("mmr", "ip", "link", "set", "dmz0", "up")
        testbed.run("mmr", "ip", "addr", "add", "2001:db8:d::1/64", "dev", "dmz0", "nodad")
        for cmd in (["link", "set", "lo", "up"], ["link", "set", "eth0", "up"],
                    ["addr", "add", "2001:db8:d::10/64", "dev", "eth0", "nodad"],
                    ["-6", "route", "add", "default", "via", "2001:db8:d::1"]):
            subprocess.run(["ip", "netns", "exec", dmz, "ip", *cmd], check=True)
        testbed.run("ar2", "ip", "-6", "route", "add", "2001:db8:d::/64", "via", "2001:db8:a2::2")
        testbed.run("cn", "ip", "-6", "route", "add", "2001:db8:d::/64", "via", "2001:db8:c2::1")
        for ar in ("ar1", "ar2"):
            subprocess.run(["ip", "netns", "exec", testbed.ns(ar), "nft", "-f", "-"], input=AR_WATCH, text=True,
                           check=True)
        with running_router(testbed):
            for node, dst in (("mn", "2001:db8:d::10"), ("cn", "2001:db8:d::10")):
                out = testbed.run(node, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", dst, check=False)
                assert out is not None and " 0% packet loss" in out, (node, out)
            out = subprocess.run(["ip", "netns", "exec", dmz, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2",
                                  MN_ADDR], capture_output=True, text=True).stdout
            assert " 0% packet loss" in out, out
            # the LAN still reaches the world through mmr meanwhile
            assert " 0% packet loss" in testbed.run("mn", "ping", "-6", "-c", "2", "-i", "0.2", CN_ADDR)
        for ar in ("ar1", "ar2"):
            listing = testbed.run(ar, "nft", "list", "table", "inet", "leak")
            assert "counter packets 0 " in listing, (ar, listing)       # nothing for the DMZ from the MMR
    finally:
        subprocess.run(["ip", "netns", "del", dmz], capture_output=True)
        for ar in ("ar1", "ar2"):
            testbed.run(ar, "nft", "delete", "table", "inet", "leak", check=False)
        testbed.run("ar2", "ip", "-6", "route", "del", "2001:db8:d::/64", check=False)
        testbed.run("cn", "ip", "-6", "route", "del", "2001:db8:d::/64", check=False)
