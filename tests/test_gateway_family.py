"""gateway4 / gateway6 live: one uplink whose IPv4 and IPv6 next hops are different hosts
on its segment (a DHCP router and an RA router behind one switch), as a home ISP's modem
and a separate IPv6 router may be.  The IPv6 router has no IPv4 at all: an IPv4 packet sent
to its MAC dies there, so both families reach CN only when each goes to its own router.

    <p>mn eth0 -- lan0 <p>mmr up1 -- p0 <p>sw (bridge) p1 -- eth0 <p>r4 eth1 -- eth1 <p>cn
                                               p2 -- eth0 <p>r6 eth1 -- eth2

The LAN: 192.168.1.0/24 (translated to up1's address, nat = "auto") and 2001:db8:a1:100::/64
(routed to the MMR by r6, untranslated).  The kernel's default offloads stay on."""
import json
import subprocess
import time

import pytest

from engine.testbed import Topology
from netlab import make_testbed, peer, running_mmr, start_peer, in_ns

pytestmark = pytest.mark.privileged

CN6, CN4 = "2001:db8:ff::1", "198.51.100.1"
R4, R6 = "198.18.1.1", "2001:db8:a1::1"

SPLIT = Topology(
    ("mn", "mmr", "sw", "r4", "r6", "cn"),
    [("mn", "eth0", "mmr", "lan0"), ("mmr", "up1", "sw", "p0"), ("sw", "p1", "r4", "eth0"),
     ("sw", "p2", "r6", "eth0"), ("r4", "eth1", "cn", "eth1"), ("r6", "eth1", "cn", "eth2")],
    {"mn": [("eth0", "192.168.1.10/24"), ("eth0", "2001:db8:a1:100::10/64")],
     "mmr": [("lan0", "192.168.1.1/24"), ("lan0", "2001:db8:a1:100::1/64"),
             ("up1", "198.18.1.2/24"), ("up1", "2001:db8:a1::2/64")],
     "r4": [("eth0", "198.18.1.1/24"), ("eth1", "198.18.11.1/24")],
     "r6": [("eth0", "2001:db8:a1::1/64"), ("eth1", "2001:db8:c1::1/64")],
     "cn": [("eth1", "198.18.11.2/24"), ("eth2", "2001:db8:c1::2/64"),
            ("lo", "2001:db8:ff::1/128"), ("lo", "198.51.100.1/32")]},
    {"mn": [["-4", "route", "add", "default", "via", "192.168.1.1"],
            ["-6", "route", "add", "default", "via", "2001:db8:a1:100::1"]],
     "mmr": [["-4", "route", "add", "default", "via", R4, "dev", "up1"],
             ["-6", "route", "add", "default", "via", R6, "dev", "up1"]],
     "r4": [["-4", "route", "add", "198.51.100.1/32", "via", "198.18.11.2"]],
     "r6": [["-6", "route", "add", "2001:db8:ff::1/128", "via", "2001:db8:c1::2"],
            ["-6", "route", "add", "2001:db8:a1:100::/64", "via", "2001:db8:a1::2"]],
     "cn": [["-4", "route", "add", "198.18.1.0/24", "via", "198.18.11.1"],
            ["-6", "route", "add", "2001:db8:a1::/48", "via", "2001:db8:c1::1"]]},
    ("mmr", "r4", "r6"), (),
    ("mn", "192.168.1.1"),
)


@pytest.fixture(scope="module")
def bed():
    with make_testbed("gwf", SPLIT) as tb:
        tb.run("sw", "ip", "link", "add", "br0", "type", "bridge")
        for port in ("p0", "p1", "p2"):
            tb.run("sw", "ip", "link", "set", port, "master", "br0")
        tb.run("sw", "ip", "link", "set", "br0", "up")
        for node, addr in (("mmr", R4), ("mmr", R6)):
            tb._wait_one(node, addr, time.monotonic() + 10)
        yield tb


def policy(tmp_path, gateways=""):
    p = tmp_path / "split.toml"
    p.write_text(f'[engine]\nlan = "lan0"\n[[uplink]]\nname = "isp"\ndevice = "up1"\n{gateways}\n'
                 f'probe_targets = ["{R4}", "{R6}"]\n')
    return str(p)


def status(tb) -> dict:
    p = subprocess_run(in_ns(tb, "mmr", "python3", "-m", "engine", "status", "--json"))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def subprocess_run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def answered(tb, dst, port, n=10) -> int:
    srv = start_peer(tb, "cn", "echo-server", port, 10, dst)
    r = peer(tb, "mn", "echo-client", dst, port, n)
    srv.terminate()
    srv.communicate(timeout=10)
    return json.loads(r.stdout)["answered"]


def warm(tb):
    """MN's first packets each way (mmr drops a reply to a LAN host whose MAC it is still
    resolving)."""
    for dst in (CN6, CN4):
        peer(tb, "mn", "reach", dst, "1")


@pytest.mark.parametrize("gateways", ["", f'gateway4 = "{R4}"\ngateway6 = "{R6}"'], ids=["auto", "static"])
def test_each_family_reaches_cn_through_its_own_router(bed, tmp_path, gateways):
    with running_mmr(bed, "mmr", "run", "forwarding", "--config", policy(tmp_path, gateways)):
        st = status(bed)
        assert st["next_hops_by_family"]["isp"] == {"ipv4": R4, "ipv6": R6}, st["next_hops_by_family"]
        warm(bed)
        assert answered(bed, CN6, 7601) >= 9
        assert answered(bed, "::ffff:" + CN4, 7602) >= 9
        text = subprocess_run(in_ns(bed, "mmr", "python3", "-m", "engine", "status")).stdout
        assert f"next hops: isp IPv4 {R4}, IPv6 {R6}" in text, text


def test_one_next_hop_for_both_families_loses_ipv4(bed, tmp_path):
    """gateway = the IPv6 router (one next hop for both, what mmr did before gateway4 and
    gateway6): IPv4 goes to a host without IPv4 and nothing comes back; IPv6 works."""
    with running_mmr(bed, "mmr", "run", "forwarding", "--config", policy(tmp_path, f'gateway = "{R6}"')):
        assert status(bed)["next_hops_by_family"]["isp"] == {"ipv4": R6, "ipv6": R6}
        warm(bed)
        assert answered(bed, CN6, 7603) >= 9
        assert answered(bed, "::ffff:" + CN4, 7604, n=5) == 0


def test_a_family_without_a_next_hop_is_dropped_and_counted(bed, tmp_path):
    """The IPv4 default route goes (a DHCP lease lost): IPv4 flows chosen for the uplink are
    dropped (no_neighbour) while IPv6 goes on; the route back brings IPv4 back."""
    with running_mmr(bed, "mmr", "run", "forwarding", "--config", policy(tmp_path)):
        warm(bed)
        bed.run("mmr", "ip", "-4", "route", "del", "default", "via", R4, "dev", "up1")
        try:
            end = time.monotonic() + 5
            while status(bed)["next_hops_by_family"]["isp"]["ipv4"] is not None:
                assert time.monotonic() < end
                time.sleep(0.1)
            before = status(bed)["drops"]["no_neighbour"]
            assert answered(bed, "::ffff:" + CN4, 7605, n=5) == 0
            assert status(bed)["drops"]["no_neighbour"] >= before + 5
            assert answered(bed, CN6, 7606) >= 9
        finally:
            bed.run("mmr", "ip", "-4", "route", "replace", "default", "via", R4, "dev", "up1")
        end = time.monotonic() + 5
        while status(bed)["next_hops_by_family"]["isp"]["ipv4"] != R4:
            assert time.monotonic() < end
            time.sleep(0.1)
        assert answered(bed, "::ffff:" + CN4, 7607) >= 9
