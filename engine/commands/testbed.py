"""mmr testbed: build or remove the draft's MN - MMR - AR1/AR2 - CN topology."""
from __future__ import annotations

import argparse

DESCRIPTION = """\
Build or remove the testbed of draft-park-mis section 6 in network namespaces on this
machine: a mobile node (MN) on the LAN of a multihomed mobile router (MMR) whose two
uplinks reach two access routers (AR1, AR2) that both lead to a correspondent node (CN).

  <prefix>mn   eth0 2001:db8:1::10        LAN 2001:db8:1::/64, 192.0.2.0/24
  <prefix>mmr  lan0 2001:db8:1::1, up1 2001:db8:a1::2, up2 2001:db8:a2::2
  <prefix>ar1  eth0 2001:db8:a1::1, eth1 2001:db8:c1::1
  <prefix>ar2  eth0 2001:db8:a2::1, eth1 2001:db8:c2::1
  <prefix>cn   2001:db8:ff::1 (loopback), reachable through both ARs

AR1 and AR2 also share a link (2001:db8:12::/64) and route the LAN over it as a backup, so
traffic from CN still reaches the MMR when one of its uplinks is down.

--topology host builds the setting of host mode (draft-hong-mif) instead:

  <prefix>host i1 2001:db8:b1::2, i2 2001:db8:b2::2   (no routes: 'mmr host' adds them via vi0)
  <prefix>r1   eth0 2001:db8:b1::1 ...   <prefix>r2   eth0 2001:db8:b2::1 ...
  <prefix>peer 2001:db8:ee::1, 198.51.100.9 (loopback); routes the VI prefixes
               2001:db8:99::/64 and 198.18.99.0/24 back via r1 and r2

The MMR forwards by kernel routing (default via AR2) until 'mmr run' runs in its namespace.
The built-in policy matches this testbed: 'ip netns exec mmr-mmr mmr run'."""

EPILOG = """\
examples:
  mmr testbed up
  ip netns exec mmr-mn ping -6 -c 3 2001:db8:ff::1
  mmr testbed down
  mmr testbed up --prefix t1-      (two testbeds can coexist with different prefixes)

Needs root and iproute2; 'up' fails with one sentence when the prefix is already in use."""


def register(sub) -> None:
    p = sub.add_parser("testbed", help="build or remove the draft's section 6 testbed (namespaces)",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["up", "down", "status"], help="build, remove or list")
    p.add_argument("--prefix", default="mmr-", metavar="P",
                   help="namespace name prefix (default 'mmr-')")
    p.add_argument("--topology", choices=["draft", "host"], default="draft",
                   help="draft: MN - MMR - AR1/AR2 - CN (default); host: a host with interfaces "
                        "i1, i2 via routers r1, r2 to a peer, for 'mmr host'")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.testbed import TOPOLOGIES, Testbed

    tb = Testbed(args.prefix, TOPOLOGIES[args.topology])
    if args.action == "up":
        tb.up()
        print(f"testbed {args.prefix!r} is up: " + ", ".join(tb.ns(n) for n in tb.topo.nodes))
    elif args.action == "down":
        k = tb.down()
        print(f"testbed {args.prefix!r}: removed {k} namespaces")
    else:
        print(f"testbed {args.prefix!r}: " + ("up" if tb.exists() else "not present"))
    return 0
