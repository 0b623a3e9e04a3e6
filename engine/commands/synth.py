"""mmr synth: write a deterministic synthetic trace for replays and benchmarks."""
from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """\
Write a realistic synthetic capture (pcap, Ethernet) of traffic leaving a LAN behind a
multihomed router: a mix of the draft's four classes with flows that start and end over time.

  VoIP     small constant packets (172-byte payload every 20 ms), UDP, DSCP EF
  video    large variable packets (800-1400 bytes, a few larger datagrams sent as fragments),
           bursty, UDP, DSCP AF41
  data     TCP-like segments, heavy-tailed flow sizes (Pareto, a few elephants), DSCP 0/AF11
  control  ICMPv6 echo, neighbour and router solicitations (ICMP echo over IPv4), CS6

A share of the IPv6 flows (--tagged-share) carry the hop-by-hop traffic control option on
every packet, with preferences 0..3 and a few undefined ones, a few reserved service types,
and some options placed after Pad1/PadN or another option.  --ipv4-share of the flows are
IPv4 (no option; DSCP only).  Sources are on the default LAN prefixes 2001:db8:1::/64 and
192.0.2.0/24; destinations on documentation prefixes.  Every checksum is valid (IPv4
header; ICMP; UDP, TCP and ICMPv6 over their pseudo-header, on the whole datagram before it
is fragmented), so Wireshark and tshark flag none.  The same arguments write the same bytes."""

EPILOG = """\
examples:
  mmr synth /tmp/mix.pcap
  mmr synth /tmp/big.pcap --packets 1000000 --flows 20000 --seed 7
  mmr synth /tmp/v4.pcap --ipv4-share 1 --tagged-share 0
  mmr synth - --packets 1000 | tshark -r - -o tcp.check_checksum:TRUE -Y 'tcp.checksum.status == "Bad"'

output:
  OUT.pcap is a microsecond pcap of Ethernet frames, snapshot length 65535.  "-" writes it
  to standard output (refused when that is a terminal); the one-line report of what was
  written then goes to standard error.

exit status: 0 written, 2 bad arguments or unwritable path."""


def _share(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number between 0 and 1") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return v


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return v


def register(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic trace (pcap) of the four traffic classes",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", metavar="OUT.pcap", help="file to write (- for standard output)")
    p.add_argument("--packets", type=_count, default=100_000, metavar="N",
                   help="frames to write, exactly (default 100000)")
    p.add_argument("--flows", type=_count, default=2_000, metavar="F",
                   help="flows to start (default 2000)")
    p.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default 1)")
    p.add_argument("--ipv4-share", type=_share, default=0.2, metavar="X",
                   help="share of flows that are IPv4, 0..1 (default 0.2)")
    p.add_argument("--tagged-share", type=_share, default=0.5, metavar="Y",
                   help="share of IPv6 flows carrying the option, 0..1 (default 0.5)")
    p.add_argument("--option-type", type=lambda s: int(s, 0), default=0x3E, metavar="T",
                   help="traffic control option type, 0x20..0x3F (default 0x3E)")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.synth import generate

    try:
        s = generate(args.out, packets=args.packets, flows=args.flows, seed=args.seed,
                     ipv4_share=args.ipv4_share, tagged_share=args.tagged_share,
                     option_type=args.option_type)
    except BrokenPipeError:                  # the reader of "-" went away: nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # so the exit flush does not fail again
        raise
    cls = "  ".join(f"{k}={v}" for k, v in s["classes"].items())
    print(f"wrote {'standard output' if args.out == '-' else args.out}: {s['packets']} frames, "
          f"{s['flows']} flows; {cls}; tagged={s['tagged']} untagged={s['untagged']} "
          f"ipv4={s['ipv4']} fragments={s['fragments']}",
          file=sys.stderr if args.out == "-" else sys.stdout)
    return 0
