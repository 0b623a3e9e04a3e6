"""The ISP testbed (``mmr testbed up --topology isp``) is as unkind as the world it stands for:
a private LAN, ISPs that drop foreign sources (BCP 38), a CN that routes nothing to the LAN, an
L3 uplink without a MAC header that can vanish and come back.  These tests check the lab
itself, with the MMR's kernel as the router (no mmr): what mmr must overcome is really there,
and what a stock router with NAT does works across it."""
import json
import subprocess

import pytest

from engine.testbed import ISP, ISP_CN_ADDR4, ISP_MN_ADDR4, CN_ADDR, Testbed
from netlab import in_ns, make_testbed, peer, start_peer

pytestmark = pytest.mark.privileged

MASQUERADE = """table inet testnat {
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        oifname { "up1", "up2" } masquerade
    }
}
"""


@pytest.fixture(scope="module")
def bed():
    with make_testbed("isp", ISP) as tb:
        yield tb


def reaches(tb, node, addr):
    return peer(tb, node, "reach", addr, "1").returncode == 0


def nft_counter(tb, node, table):
    out = tb.run(node, "nft", "-j", "list", "table", "inet", table)
    return sum(e["counter"]["packets"] for item in json.loads(out)["nftables"]
               for e in item.get("rule", {}).get("expr", []) if "counter" in e)


def test_l3_uplink_has_no_mac_header(bed):
    """ISP2's link is ARPHRD_NONE (no Ethernet header, no neighbour discovery) and carries
    both families both ways."""
    assert bed.run("mmr", "cat", "/sys/class/net/up2/type").strip() == "65534"
    assert bed.run("isp2", "cat", "/sys/class/net/eth0/type").strip() == "65534"
    assert reaches(bed, "isp2", "2001:db8:a2::2") and reaches(bed, "isp2", "198.18.2.2")
    assert reaches(bed, "mmr", "2001:db8:a2::1") and reaches(bed, "mmr", "198.18.2.1")


def test_lan_sources_are_dropped_by_bcp38_and_cn_has_no_route_back(bed):
    """The MMR's kernel forwards the LAN's private sources unchanged: ISP1 drops them at its
    customer port (its counter rises) and nothing reaches CN; CN has no route to the LAN."""
    before = nft_counter(bed, "isp1", "bcp38")
    assert not reaches(bed, "mn", ISP_CN_ADDR4)
    assert not reaches(bed, "mn", CN_ADDR)
    assert nft_counter(bed, "isp1", "bcp38") >= before + 2
    for dst in (ISP_MN_ADDR4, "fd00:1::10"):
        r = subprocess.run(in_ns(bed, "cn", "ip", "route", "get", dst), capture_output=True, text=True)
        assert r.returncode != 0 and "unreachable" in r.stderr, (dst, r.stdout, r.stderr)


def test_a_stock_router_with_nat_works_across_both_isps(bed):
    """The baseline users have: the MMR's kernel masquerading.  Via ISP1 (Ethernet) and, with
    up1 down, via ISP2 (the L3 link): reach CN in both families and move 2 MB over TCP,
    hash-checked."""
    subprocess.run(in_ns(bed, "mmr", "nft", "-f", "-"), input=MASQUERADE, text=True, check=True)
    try:
        assert reaches(bed, "mn", ISP_CN_ADDR4) and reaches(bed, "mn", CN_ADDR)
        bed.run("mmr", "ip", "link", "set", "up1", "down")
        try:
            bed.run("mmr", "ip", "-4", "route", "flush", "cache", check=False)
            assert reaches(bed, "mn", ISP_CN_ADDR4) and reaches(bed, "mn", CN_ADDR)
            for port, dst in ((5801, "::ffff:" + ISP_CN_ADDR4), (5802, CN_ADDR)):
                sink = start_peer(bed, "cn", "tcp-sink", port)
                try:
                    r = peer(bed, "mn", "tcp-send", dst, port, 2_000_000, timeout=60)
                    assert r.returncode == 0, r.stderr
                    out = json.loads(r.stdout)
                    assert out["answer"] == out["expect"], out
                finally:
                    sink.kill()
                    sink.wait()
        finally:
            bed.run("mmr", "ip", "link", "set", "up1", "up")
            for r in ISP.routes["mmr"]:          # IPv4 drops routes over a link that went down
                bed.run("mmr", "ip", *r, check=False)
    finally:
        bed.run("mmr", "nft", "delete", "table", "inet", "testnat", check=False)


def test_l3_device_vanishes_and_comes_back_with_a_new_index(bed):
    """Stopping the link's process deletes both TUNs (as a modem reset does); relink re-creates
    them under the same names with new indexes, addressed and routed again."""
    old = bed.run("mmr", "cat", "/sys/class/net/up2/ifindex").strip()
    assert bed.stop_l3link("mmr", "up2")
    r = subprocess.run(in_ns(bed, "mmr", "ip", "link", "show", "up2"), capture_output=True, text=True)
    assert r.returncode != 0
    bed.relink("mmr", "up2")
    new = bed.run("mmr", "cat", "/sys/class/net/up2/ifindex").strip()
    assert new != old
    assert reaches(bed, "isp2", "2001:db8:a2::2") and reaches(bed, "isp2", "198.18.2.2")
    assert "default dev up2" in bed.run("mmr", "ip", "-6", "route", "show", "default")


def test_down_stops_the_link_process_and_leaves_nothing():
    tb = Testbed("ispd-", ISP)
    tb.down()
    try:
        tb.up()
        pid = int(open(tb._pidfile("mmr", "up2")).read())
        assert open(f"/proc/{pid}/cmdline", "rb").read().count(b"engine.l3link") == 1
    finally:
        tb.down()
    stat = None
    try:
        stat = open(f"/proc/{pid}/stat").read().split(") ")[-1][0]
    except OSError:
        pass
    assert stat in (None, "Z"), stat
    assert not tb.exists()
