"""The draft's section 6 testbed in network namespaces:  MN - MMR - AR1/AR2 - CN.

    <p>mn  eth0 ---- lan0  <p>mmr  up1 ---- eth0 <p>ar1 eth1 ---- eth1
                                   up2 ---- eth0 <p>ar2 eth1 ---- eth2  <p>cn  (lo: 2001:db8:ff::1)

IPv6 (and IPv4) from documentation/benchmark ranges; ARs route the LAN prefix back to the
MMR; CN reaches the LAN over both ARs (multipath); the MMR forwards by kernel routing with a
default route via AR2 until ``mmr run`` takes over.  AR1 and AR2 share a link too, and each
routes the LAN prefix over it with a higher metric: when the MMR's link to one AR goes down,
traffic from CN that reaches that AR still finds its way back (as two ISPs' access routers
of one operator would).

The links keep the kernel's default offloads (on a veth: TX checksum offload, TSO and GSO
on, so a local TCP sender hands the next hop 64 KiB super-frames with unfinished
checksums, as a VM with virtio-net does).  The sysctls set, and why: forwarding on the
routers (they are routers); no duplicate address detection (static documentation addresses,
and a second of DAD per address would only slow the tests); IPv6 addresses kept across a
link going down, as IPv4's are (the failover tests take links down and up again, which a
network manager would re-address); and on the ARs, routes over a link without carrier are
ignored, so their backup route over the AR1-AR2 link takes over.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

from engine.errors import UserError
from engine.netns import namespaces, require_tools, sh, sysctl

NODES = ("mn", "mmr", "ar1", "ar2", "cn")
ENGINE_HOME = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (ns a, dev a, ns b, dev b)
LINKS = [
    ("mn", "eth0", "mmr", "lan0"),
    ("mmr", "up1", "ar1", "eth0"),
    ("mmr", "up2", "ar2", "eth0"),
    ("ar1", "eth1", "cn", "eth1"),
    ("ar2", "eth1", "cn", "eth2"),
    ("ar1", "eth2", "ar2", "eth2"),   # the ARs' own link: each is the other's way back to the MMR
]

ADDRS = {  # node: [(dev, address/len)]
    "mn": [("eth0", "2001:db8:1::10/64"), ("eth0", "192.0.2.10/24")],
    "mmr": [("lan0", "2001:db8:1::1/64"), ("lan0", "192.0.2.1/24"),
            ("up1", "2001:db8:a1::2/64"), ("up1", "198.18.1.2/24"),
            ("up2", "2001:db8:a2::2/64"), ("up2", "198.18.2.2/24")],
    "ar1": [("eth0", "2001:db8:a1::1/64"), ("eth0", "198.18.1.1/24"),
            ("eth1", "2001:db8:c1::1/64"), ("eth1", "198.18.11.1/24"),
            ("eth2", "2001:db8:12::1/64"), ("eth2", "198.18.3.1/24")],
    "ar2": [("eth0", "2001:db8:a2::1/64"), ("eth0", "198.18.2.1/24"),
            ("eth1", "2001:db8:c2::1/64"), ("eth1", "198.18.12.1/24"),
            ("eth2", "2001:db8:12::2/64"), ("eth2", "198.18.3.2/24")],
    "cn": [("eth1", "2001:db8:c1::2/64"), ("eth1", "198.18.11.2/24"),
           ("eth2", "2001:db8:c2::2/64"), ("eth2", "198.18.12.2/24"),
           ("lo", "2001:db8:ff::1/128"), ("lo", "198.51.100.1/32")],
}

ROUTES = {  # node: [ip route arguments]
    "mn": [["-6", "route", "add", "default", "via", "2001:db8:1::1"],
           ["-4", "route", "add", "default", "via", "192.0.2.1"]],
    "mmr": [["-6", "route", "add", "default", "via", "2001:db8:a2::1", "dev", "up2"],
            ["-4", "route", "add", "default", "via", "198.18.2.1"]],
    "ar1": [["-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:a1::2"],
            ["-6", "route", "add", "2001:db8:ff::1/128", "via", "2001:db8:c1::2"],
            ["-4", "route", "add", "192.0.2.0/24", "via", "198.18.1.2"],
            ["-4", "route", "add", "198.51.100.1/32", "via", "198.18.11.2"],
            ["-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:12::2", "metric", "2048"],
            ["-4", "route", "add", "192.0.2.0/24", "via", "198.18.3.2", "metric", "2048"]],
    "ar2": [["-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:a2::2"],
            ["-6", "route", "add", "2001:db8:ff::1/128", "via", "2001:db8:c2::2"],
            ["-4", "route", "add", "192.0.2.0/24", "via", "198.18.2.2"],
            ["-4", "route", "add", "198.51.100.1/32", "via", "198.18.12.2"],
            ["-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:12::1", "metric", "2048"],
            ["-4", "route", "add", "192.0.2.0/24", "via", "198.18.3.1", "metric", "2048"]],
    "cn": [["-6", "route", "add", "2001:db8:1::/64", "nexthop", "via", "2001:db8:c1::1", "dev", "eth1",
            "nexthop", "via", "2001:db8:c2::1", "dev", "eth2"],
           ["-4", "route", "add", "192.0.2.0/24", "nexthop", "via", "198.18.11.1", "dev", "eth1",
            "nexthop", "via", "198.18.12.1", "dev", "eth2"]],
}

@dataclass(frozen=True)
class Topology:
    nodes: tuple
    links: list
    addrs: dict
    routes: dict
    forwarders: tuple          # nodes that route (forwarding on)
    backup: tuple              # nodes that skip routes over links without carrier
    check: tuple               # (node, address) that must answer ping once built


DRAFT = Topology(NODES, LINKS, ADDRS, ROUTES, ("mmr", "ar1", "ar2"), ("ar1", "ar2"),
                 ("mn", "2001:db8:ff::1"))

# Host mode (draft-hong-mif): a host with two physical interfaces I1, I2 through routers R1,
# R2 to a peer that routes the virtual interface's prefix 2001:db8:99::/64 back via both.
#
#   <p>host  i1 ---- eth0 <p>r1 eth1 ---- eth1  <p>peer (lo: 2001:db8:ee::1)
#            i2 ---- eth0 <p>r2 eth1 ---- eth2
#                         r1 eth2 ---- eth2 r2 (backup for each other)
HOST = Topology(
    ("host", "r1", "r2", "peer"),
    [("host", "i1", "r1", "eth0"), ("host", "i2", "r2", "eth0"), ("r1", "eth1", "peer", "eth1"),
     ("r2", "eth1", "peer", "eth2"), ("r1", "eth2", "r2", "eth2")],
    {"host": [("i1", "2001:db8:b1::2/64"), ("i2", "2001:db8:b2::2/64"),
              ("i1", "198.18.21.2/24"), ("i2", "198.18.22.2/24")],
     "r1": [("eth0", "2001:db8:b1::1/64"), ("eth1", "2001:db8:d1::1/64"), ("eth2", "2001:db8:12::1/64"),
            ("eth0", "198.18.21.1/24"), ("eth1", "198.18.31.1/24"), ("eth2", "198.18.40.1/24")],
     "r2": [("eth0", "2001:db8:b2::1/64"), ("eth1", "2001:db8:d2::1/64"), ("eth2", "2001:db8:12::2/64"),
            ("eth0", "198.18.22.1/24"), ("eth1", "198.18.32.1/24"), ("eth2", "198.18.40.2/24")],
     "peer": [("eth1", "2001:db8:d1::2/64"), ("eth2", "2001:db8:d2::2/64"), ("lo", "2001:db8:ee::1/128"),
              ("lo", "2001:db8:ee:c0::1/128"), ("eth1", "198.18.31.2/24"), ("eth2", "198.18.32.2/24"),
              ("lo", "198.51.100.9/32")]},
    {"r1": [["-6", "route", "add", "2001:db8:99::/64", "via", "2001:db8:b1::2"],
            ["-6", "route", "add", "2001:db8:ee::/48", "via", "2001:db8:d1::2"],
            ["-6", "route", "add", "2001:db8:99::/64", "via", "2001:db8:12::2", "metric", "2048"],
            ["-4", "route", "add", "198.18.99.0/24", "via", "198.18.21.2"],
            ["-4", "route", "add", "198.51.100.0/24", "via", "198.18.31.2"],
            ["-4", "route", "add", "198.18.99.0/24", "via", "198.18.40.2", "metric", "2048"]],
     "r2": [["-6", "route", "add", "2001:db8:99::/64", "via", "2001:db8:b2::2"],
            ["-6", "route", "add", "2001:db8:ee::/48", "via", "2001:db8:d2::2"],
            ["-6", "route", "add", "2001:db8:99::/64", "via", "2001:db8:12::1", "metric", "2048"],
            ["-4", "route", "add", "198.18.99.0/24", "via", "198.18.22.2"],
            ["-4", "route", "add", "198.51.100.0/24", "via", "198.18.32.2"],
            ["-4", "route", "add", "198.18.99.0/24", "via", "198.18.40.1", "metric", "2048"]],
     "peer": [["-6", "route", "add", "2001:db8:99::/64", "nexthop", "via", "2001:db8:d1::1", "dev", "eth1",
               "nexthop", "via", "2001:db8:d2::1", "dev", "eth2"],
              ["-6", "route", "add", "2001:db8:b1::/64", "via", "2001:db8:d1::1"],
              ["-6", "route", "add", "2001:db8:b2::/64", "via", "2001:db8:d2::1"],
              ["-4", "route", "add", "198.18.99.0/24", "nexthop", "via", "198.18.31.1", "dev", "eth1",
               "nexthop", "via", "198.18.32.1", "dev", "eth2"]]},
    ("r1", "r2"), ("r1", "r2"),
    ("host", "2001:db8:b2::1"),
)
HOST_VI_ADDR = "2001:db8:99::10"
PEER_ADDR = "2001:db8:ee::1"
PEER_CORP_ADDR = "2001:db8:ee:c0::1"      # the built-in host policy pins it to i2
HOST_VI_ADDR4 = "198.18.99.10"
PEER_ADDR4 = "198.51.100.9"
TOPOLOGIES = {"draft": DRAFT, "host": HOST}

MN_ADDR = "2001:db8:1::10"
CN_ADDR = "2001:db8:ff::1"
MN_ADDR4 = "192.0.2.10"
CN_ADDR4 = "198.51.100.1"


class Testbed:
    """Build (``up``) and remove (``down``) the topology; a context manager that always
    tears down what it built."""

    __test__ = False    # not a pytest test class, whatever its name

    def __init__(self, prefix: str = "mmr-", topology: Topology | None = None):
        if not prefix or len(prefix) > 12 or any(c in prefix for c in " /"):
            raise UserError(f"--prefix {prefix!r}: use 1-12 characters without spaces or '/'")
        self.prefix = prefix
        self.topo = topology or DRAFT

    def ns(self, node: str) -> str:
        return self.prefix + node

    def exists(self) -> bool:
        have = set(namespaces())
        return any(self.ns(n) in have for n in self.topo.nodes)

    def up(self, wait: float = 10.0) -> "Testbed":
        require_tools()
        if self.exists():
            raise UserError(f"a testbed with prefix {self.prefix!r} already exists; remove it with "
                            f"'mmr testbed down --prefix {self.prefix}' or choose another --prefix")
        try:
            self._build()
            self._wait(wait)
        except Exception:
            self.down()
            raise
        return self

    def _build(self) -> None:
        t = self.topo
        for n in t.nodes:
            sh("ip", "netns", "add", self.ns(n))
            sh("ip", "link", "set", "lo", "up", ns=self.ns(n))
            for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
                sysctl(self.ns(n), key, 0)
            # static addressing: keep IPv6 addresses across link down/up, as IPv4 does
            for key in ("net.ipv6.conf.all.keep_addr_on_down", "net.ipv6.conf.default.keep_addr_on_down"):
                sysctl(self.ns(n), key, 1)
        for a, da, b, db in t.links:
            sh("ip", "link", "add", da, "netns", self.ns(a), "type", "veth", "peer", "name", db,
               "netns", self.ns(b))
        for a, da, b, db in t.links:
            for ns, dev in ((a, da), (b, db)):
                sh("ip", "link", "set", dev, "up", ns=self.ns(ns))
        for n, addrs in t.addrs.items():
            for dev, addr in addrs:
                extra = ["nodad"] if ":" in addr else []
                sh("ip", "addr", "add", addr, "dev", dev, *extra, ns=self.ns(n))
        for n in t.forwarders:
            sysctl(self.ns(n), "net.ipv6.conf.all.forwarding", 1)
            sysctl(self.ns(n), "net.ipv4.ip_forward", 1)
        for n in t.backup:            # a route over a link without carrier is skipped: the backup
            for key in ("net.ipv6.conf.all.ignore_routes_with_linkdown",
                        "net.ipv4.conf.all.ignore_routes_with_linkdown"):
                sysctl(self.ns(n), key, 1)
        for n, routes in t.routes.items():
            for r in routes:
                sh("ip", *r, ns=self.ns(n))

    def relink(self, node_a: str, dev_a: str) -> None:
        """Re-create the link of dev_a on node_a (after a test deleted it): the veth pair, its
        addresses on both ends and the routes of both nodes (those still there are kept)."""
        for a, da, b, db in self.topo.links:
            if (a, da) == (node_a, dev_a) or (b, db) == (node_a, dev_a):
                break
        else:
            raise ValueError(f"no link {node_a}:{dev_a}")
        sh("ip", "link", "add", da, "netns", self.ns(a), "type", "veth", "peer", "name", db, "netns", self.ns(b))
        for ns, dev in ((a, da), (b, db)):
            sh("ip", "link", "set", dev, "up", ns=self.ns(ns))
            for d, addr in self.topo.addrs.get(ns, []):
                if d == dev:
                    sh("ip", "addr", "add", addr, "dev", dev, *(["nodad"] if ":" in addr else []), ns=self.ns(ns))
        for ns in (a, b):
            for r in self.topo.routes.get(ns, []):
                sh("ip", *r, ns=self.ns(ns), check=False)

    def _wait(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            node, target = self.topo.check
            try:         # the engine this process imported, not a source tree in the cwd
                sh(sys.executable, "-m", "engine.peers", "reach", target, "1", ns=self.ns(node), cwd=ENGINE_HOME)
                ok = True
            except RuntimeError:
                ok = None
            if ok is not None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"testbed built but {node} cannot reach {target}")
            time.sleep(0.2)

    def run(self, node: str, *cmd: str, check: bool = True, timeout: float = 30):
        try:
            return sh(*cmd, ns=self.ns(node), timeout=timeout)
        except RuntimeError:
            if check:
                raise
            return None

    def down(self) -> int:
        """Remove every namespace of this prefix, of any topology (veths go with them);
        returns how many."""
        k = 0
        nodes = dict.fromkeys(n for t in TOPOLOGIES.values() for n in t.nodes)
        have = set(namespaces())
        for n in nodes:
            if self.ns(n) in have:
                sh("ip", "netns", "del", self.ns(n), check=False)
                k += 1
        return k

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()
        return False
