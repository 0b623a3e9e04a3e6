"""mmr run: the live router on the LAN device and every uplink of the policy file."""
from __future__ import annotations

import argparse

from engine.commands import add_loop_options

DESCRIPTION = """\
Run the multihomed router: open AF_PACKET TPACKET_V3 rings on the LAN device and on every
uplink device of the policy file and forward, per flow, over the uplink the metric function
chooses.  LAN -> uplink: parse, flowbase lookup, selection for new flows, Ethernet rewrite
(uplink MAC -> gateway MAC), hop limit / TTL - 1 (ICMP time exceeded when it runs out),
batched send on the chosen uplink.  Uplink -> LAN: packets for the LAN prefixes go to the
host's MAC from the neighbour table.  Packets for the router itself, multicast and
link-local traffic (neighbour discovery) are left to the kernel.

While mmr runs, an nftables table 'inet mmr' stops the kernel from also forwarding between
these devices; it is removed when mmr stops (SIGINT or SIGTERM).  Receive coalescing
(GRO/LRO) is switched off on them with a warning and restored at exit.  Packets larger than
the egress MTU get ICMPv6 packet too big (IPv4 with DF: fragmentation needed).

The connection manager ([monitor] in the policy file) follows every uplink: link and address
events from netlink, ICMPv6/ICMP probes out of each uplink (RTT, loss, jitter; down after
down_after losses, up after up_after answers and a hold-down).  When an uplink becomes
unusable, only its flows move, in one step, to the best usable uplink.  SIGHUP re-reads the
policy file (an invalid one is rejected, the old policy keeps running); 'mmr status',
'mmr flows' and 'mmr reload' talk to the control socket.  A one-line summary is logged every
--stats-interval seconds and at exit."""

EPILOG = """\
requirements: root (or CAP_NET_RAW + CAP_NET_ADMIN), nftables, the devices of the policy
file, and gateways that answer neighbour discovery (or a static gateway_mac).  A missing
device, privilege or gateway ends with one sentence and exit status 2.

signals: SIGINT/SIGTERM stop (restoring nftables and offloads), SIGHUP reloads the policy.

examples:
  mmr testbed up && ip netns exec mmr-mmr mmr run
  mmr run --config /etc/mmr/policy.toml --stats-interval 10"""


def register(sub) -> None:
    p = sub.add_parser("run", help="run the live router (AF_PACKET datapath)",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_loop_options(p, "frames")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.config import load_config
    from engine.router import Router

    cfg = load_config(args.config)
    Router(cfg, batch=args.batch, stats_interval=args.stats_interval).run(args.duration)
    return 0
