"""mmr replay: run the whole pipeline over a pcap, packet timestamps as the clock."""
from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """\
Replay a capture (pcap or pcapng) through mmr's whole data path, exactly as the live router
runs it: parse (IPv6 extension headers, the hop-by-hop traffic control option, IPv4, VLAN
tags) -> classify (option, rules, DSCP) -> flowbase lookup -> metric selection for new
flows -> per-uplink output.  Packets are processed in batches and the packet timestamps
drive idle expiry, so a replay gives the same decisions every time.

The capture may be of Ethernet frames (link type 1), Linux cooked frames as 'tcpdump -i any'
writes them (SLL 113, SLL2 276), or raw IP packets as a capture on a TUN device holds
(LINKTYPE_RAW 101, which libpcap also reports as 12 or 14; IPv4-only 228, IPv6-only 229).
Cooked and raw records are replayed as the Ethernet frames they carry, ethertype from the
cooked header's protocol or the IP version; other protocols (ARP, ...) count as not IP.

The summary lists, per uplink, the packets, bytes and flows it would carry; packets per
service class; drops by reason (truncated headers, malformed options, no usable uplink, ...);
flows created, expired and evicted; and the packet rate of the replay itself."""

EPILOG = """\
outputs:
  --json         the summary as one JSON object with the keys packets, bytes, flows,
                 uplinks (name -> {packets, bytes, flows}), classes (data, control, voip,
                 video -> packets), drops (reason -> packets), elapsed_s, pps; plus
                 flow_events, kernel, notes and link_type; and, only when they apply,
                 truncated {complete_bytes, file_bytes}, corrupt {at_byte, file_bytes,
                 error} and timestamps {usec_carried, out_of_range}.
  --flows CSV    one row per flow: src,dst,proto,sport,dport,service,preference,uplink,
                 packets,bytes (addresses in text form, service by name, uplink by name).
                 --flows - writes the rows to standard output, and the summary (text or
                 --json) then goes to standard error.
  --out DIR      DIR/<uplink>.pcap for each uplink and DIR/dropped.pcap, for Wireshark:
                 the records exactly as read, in the capture's own link type (an SLL
                 capture gives SLL pcaps), microsecond pcap, snapshot length 65535 (262144
                 if a longer record is written), so no frame is cut.  Frames left to the
                 host (not IP) are in neither.

progress:
  A progress line on standard error (file position, packets, packets/s) is drawn while
  standard error is a terminal; --progress shows it anyway (a line every 5 s when standard
  error is not a terminal), --no-progress never.

timestamps:
  A microseconds field of 1000000 or more (a damaged pcap record) is carried into the
  seconds; a time a pcap cannot hold (before 1970, or pcapng seconds past 2**32, after
  2106) is written to the --out pcaps at the nearest end of that range.  Both are counted
  and shown as warnings in the summary.

errors:
  A missing file, a pipe or "-" (the capture is read from a file, which may be read twice
  to locate a bad record), a file that is not a capture, or a link type not listed above
  ends with one line on stderr and exit status 2, before anything is read.

  A file cut short (its last record or block runs past the end of the file, as a capture
  still being written or copied in part) is replayed up to that record; the summary says
  where the complete records end, and the exit status is 0.

  A corrupt file (a record or block before the end that libpcap cannot read: an impossible
  capture length, a damaged block length, a packet of an undeclared interface) stops the
  replay there.  Everything before the bad record is replayed and reported as usual
  (summary on standard output with "corrupt" in --json, --flows and --out written), then
  one line on stderr names it, "PCAP is corrupt at byte N of SIZE: <libpcap's reason>",
  and the exit status is 2.

exit status: 0 replayed (also a file cut short), 2 bad arguments, unreadable or corrupt
capture, unwritable output.

examples:
  mmr synth /tmp/mix.pcap --packets 100000
  mmr replay /tmp/mix.pcap
  mmr replay /tmp/mix.pcap --config /etc/mmr/policy.toml --json
  mmr replay /tmp/mix.pcap --out /tmp/split --flows /tmp/flows.csv
  mmr replay /tmp/mix.pcap --flows - | sort -t, -k10 -n | tail
  tcpdump -i any -Q in -w /tmp/any.pcap   # cooked (SLL); -Q in: a packet the host forwards
  mmr replay /tmp/any.pcap                # is in the capture once, not once per interface"""


def register(sub) -> None:
    p = sub.add_parser(
        "replay",
        help="run the pipeline over a pcap and report per-uplink decisions",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pcap", metavar="PCAP",
                   help="capture (pcap or pcapng) of Ethernet, Linux cooked or raw IP frames")
    p.add_argument("--config", metavar="CFG", help="policy file (default: the built-in policy)")
    p.add_argument("--out", metavar="DIR", help="write DIR/<uplink>.pcap and DIR/dropped.pcap")
    p.add_argument("--flows", metavar="CSV",
                   help="write one row per flow to CSV (- for standard output)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--batch", metavar="N", type=int, default=256,
                   help="frames per batch through the compiled stages (default 256)")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true",
                       help="show the progress line even when stderr is not a terminal")
    shown.add_argument("--no-progress", action="store_true",
                       help="no progress line (it is shown only on a terminal anyway)")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.config import load_config
    from engine.replay import CorruptCapture, Replay

    cfg = load_config(args.config)
    progress = True if args.progress else False if args.no_progress else None
    rp = Replay(args.pcap, cfg, batch=args.batch, out_dir=args.out, flows_csv=args.flows,
                progress=progress)
    stream = sys.stderr if args.flows == "-" else sys.stdout   # stdout carries the CSV
    try:
        summary = rp.run()
    except CorruptCapture as exc:          # report what was read, then the one-line error
        _print(exc.summary, args, stream)
        raise
    _print(summary, args, stream)
    return 0


def _print(summary: dict, args, stream) -> None:
    from engine.replay import format_summary

    text = json.dumps(summary, sort_keys=False) if args.json else format_summary(summary, args.pcap)
    print(text, file=stream, flush=True)
