"""mmr tag: the traffic control option on the packets of unmodified applications of this
host (the mobile node), chosen by [[tag]] rules; engine/tagger.py does the work."""
from __future__ import annotations

import argparse

NAME = "tag"

DESCRIPTION = """\
Put the traffic control option (draft-park-mis: an IPv6 hop-by-hop option carrying a service
type and a preference) on the outgoing IPv6 packets of applications that know nothing of
it, so that the multihomed router ('mmr run') upstream chooses their uplink by it.  Which
packets get which option is said by [[tag]] rules in the policy file; every rule matches in
the kernel, on any combination of:

  user = "alice" | 1000       the socket's owner (meta skuid)
  group = "video" | 44        the socket's group (meta skgid)
  cgroup = "system.slice/x.service"
                              the socket's cgroup v2 path: a systemd unit or slice, as
                              'systemctl show -p ControlGroup UNIT' prints it (user sessions:
                              "user.slice/user-1000.slice/...")
  proto = "tcp" | "udp" | "icmpv6" | "sctp" | "udplite" | N
  sport / dport = 443 | "5000-5100"
  dst = "2001:db8::/32"       an IPv6 destination prefix (the option is IPv6 only)

and sets service = "data" | "control" | "voip" | "video" (default data) and preference =
0..65535 (0 none, 1 max throughput, 2 QoS, 3 load balancing; default 0).  The first rule
that matches a packet tags it; packets no rule matches, IPv4, and loopback traffic leave
untouched.  [engine] option_type sets the option type (default 0x3E).  A file with only
[engine] and [[tag]] tables is enough; the policy file of 'mmr host' may hold them too.

How: an nftables table 'inet mmrtag' at the output hook sends the packets of rule i to
NFQUEUE queue-base + i; mmr reads the queues over nfnetlink, many packets per system call,
inserts an 8-byte hop-by-hop header (or adds the option to the packet's own), fixes the
payload length and the next-header chain, finishes a checksum the stack left to the device,
and hands each packet back to the kernel.  TCP super-frames (TSO/GSO) are tagged whole.

The 8 added bytes never make a packet too big: the SYN-ACK of a tagged TCP connection gets
its MSS clamped to the route MTU - 68 (the line at start shows the values), so every segment
fits with the option; a TCP connection that was open before mmr tag started stays untagged;
any other packet that would outgrow its egress device's MTU is sent untagged and counted
(too_big).  A UDP super-frame (UDP_SEGMENT, as QUIC stacks send) passes untagged (gso_udp).

Nothing is held up by mmr: the rules queue with 'bypass' and the queues fail open, so if mmr
is not reading (stopped, killed, overloaded) packets flow untagged.  The table is created
with 'flags owner' by an 'nft -i' child of mmr and vanishes with mmr, however it ends."""

EPILOG = """\
policy file example (/etc/mmr/tag.toml):
  [[tag]]                               # the video calls of alice: VoIP, QoS
  user = "alice"
  proto = "udp"
  dport = "3478-3497"
  service = "voip"
  preference = 2

  [[tag]]                               # backups, whoever runs them: throughput
  cgroup = "system.slice/restic.service"
  service = "data"
  preference = 1

examples:
  mmr tag --config /etc/mmr/tag.toml
  mmr tag --config tag.toml --stats-interval 10 --log-level warning
  ip netns exec mmr-mn mmr tag --config tag.toml --duration 60
  mmr tag --config tag.toml --show     # the nftables rules, without installing them

logging: on stderr, 'mmr: ...'; a summary every --stats-interval seconds and at exit:
packets, tagged, already_tagged (the application set the option itself), too_big, gso_udp (a
non-TCP super-frame),
cannot (truncated, jumbo, routing header with an unfinished checksum), batches,
us_per_packet (mmr's own work per packet) and verdict_us_per_packet (the verdict system
calls, inside which the kernel sends each packet on).

requirements: root, or CAP_NET_ADMIN (nftables, NFQUEUE); a kernel with nfnetlink_queue and
either the nftables queue statement (nft_queue) or nft_compat with the xtables NFQUEUE
target (then the rule numbers travel in packet mark bits 16-23, 0x00ff0000, which mmr sets
and clears again at the output hook: leave those bits to mmr tag); nft_socket and a cgroup
v2 hierarchy for cgroup rules.  'ip netns exec' mounts a /sys without the cgroup hierarchy:
in a network namespace use 'nsenter --net=/run/netns/NAME mmr tag ...' for cgroup rules.

signals: SIGINT/SIGTERM stop (the table goes first, then traffic flows untagged).

exit status: 0 stopped, 1 runtime failure, 2 a bad policy file (a missing user, group or
cgroup, an IPv4 dst, ...), an NFQUEUE that another program has bound, or no privilege."""


def register(sub) -> None:
    p = sub.add_parser(NAME, help="tag the IPv6 packets of unmodified applications with the traffic "
                                  "control option ([[tag]] rules)", description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="CFG", help="policy file with the [[tag]] rules (required)")
    p.add_argument("--queue-base", type=int, default=None, metavar="N",
                   help="NFQUEUE number of the first rule; rule i uses N + i (default 15872, 0x3E00)")
    p.add_argument("--batch", type=int, default=64, metavar="N",
                   help="packets read per system call (default 64)")
    p.add_argument("--stats-interval", type=float, default=60.0, metavar="S",
                   help="seconds between summary lines, 0 for none (default 60)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log only lines at this level or above (default info)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: run until SIGINT/SIGTERM)")
    p.add_argument("--show", action="store_true",
                   help="print the nftables table mmr would install and exit (needs no root)")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.errors import UserError
    from engine.log import Log
    from engine import tagger

    if args.stats_interval < 0 or args.stats_interval != args.stats_interval:
        raise UserError(f"--stats-interval {args.stats_interval}: use 0 (no summary) or a positive number of seconds")
    if not 1 <= args.batch <= 1024:
        raise UserError(f"--batch {args.batch}: use 1..1024")
    base = tagger.QUEUE_BASE if args.queue_base is None else args.queue_base
    cfg = tagger.load_tag_config(args.config)
    if base < 0 or base + len(cfg.tags) > 65536:
        raise UserError(f"--queue-base {base}: the {len(cfg.tags)} queue(s) must be within 0..65535")
    if args.show:
        mss = {r.index: tagger.route_mtu(r.dst) - tagger.IPV6_TCP_OVERHEAD for r in cfg.tags}
        print(tagger.table_text(cfg.tags, base, mss, xt=not tagger.nft_queue_supported()).replace("; ", ";\n"))
        return 0
    log = Log(level=args.log_level)
    try:
        tagger.run_tagger(cfg, log, base, args.batch, args.duration, args.stats_interval)
    finally:
        log.close()
    return 0
