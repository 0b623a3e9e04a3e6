"""mmr replay: run the whole pipeline over a pcap, packet timestamps as the clock."""
from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
Replay a capture of Ethernet frames (pcap or pcapng) through mmr's whole data path, exactly
as the live router runs it: parse (IPv6 extension headers, the hop-by-hop traffic control
option, IPv4, VLAN tags) -> classify (option, rules, DSCP) -> flowbase lookup -> metric
selection for new flows -> per-uplink output.  Packets are processed in batches and the
packet timestamps drive idle expiry, so a replay gives the same decisions every time.

The summary lists, per uplink, the packets, bytes and flows it would carry; packets per
service class; drops by reason (truncated headers, malformed options, no usable uplink, ...);
flows created, expired and evicted; and the packet rate of the replay itself."""

EPILOG = """\
outputs:
  --json         the summary as one JSON object with the keys packets, bytes, flows,
                 uplinks (name -> {packets, bytes, flows}), classes (data, control, voip,
                 video -> packets), drops (reason -> packets), elapsed_s, pps; plus
                 flow_events, kernel and notes.
  --flows CSV    one row per flow: src,dst,proto,sport,dport,service,preference,uplink,
                 packets,bytes (addresses in text form, service by name, uplink by name).
  --out DIR      DIR/<uplink>.pcap for each uplink and DIR/dropped.pcap, for Wireshark.
                 Frames left to the host (not IP) are in neither.

errors:
  A missing file, a file that is not a capture, or a link type other than Ethernet ends
  with one line on stderr and exit status 2.  A file whose last record is cut short is
  replayed up to that record and the summary says so.

examples:
  mmr synth /tmp/mix.pcap --packets 100000
  mmr replay /tmp/mix.pcap
  mmr replay /tmp/mix.pcap --config /etc/mmr/policy.toml --json
  mmr replay /tmp/mix.pcap --out /tmp/split --flows /tmp/flows.csv"""


def register(sub) -> None:
    p = sub.add_parser(
        "replay",
        help="run the pipeline over a pcap and report per-uplink decisions",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pcap", metavar="PCAP", help="capture of Ethernet frames (pcap or pcapng)")
    p.add_argument("--config", metavar="CFG", help="policy file (default: the built-in policy)")
    p.add_argument("--out", metavar="DIR", help="write DIR/<uplink>.pcap and DIR/dropped.pcap")
    p.add_argument("--flows", metavar="CSV", help="write one row per flow to CSV")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--batch", metavar="N", type=int, default=256,
                   help="frames per batch through the compiled stages (default 256)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it is shown only on a terminal anyway)")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.config import load_config
    from engine.replay import Replay, format_summary

    cfg = load_config(args.config)
    rp = Replay(args.pcap, cfg, batch=args.batch, out_dir=args.out, flows_csv=args.flows,
                progress=False if args.no_progress else None)
    summary = rp.run()
    if args.json:
        print(json.dumps(summary, sort_keys=False))
    else:
        print(format_summary(summary, args.pcap))
    return 0
