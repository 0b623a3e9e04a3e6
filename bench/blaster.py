"""The project's own AF_PACKET traffic generator for the forwarding benchmark.

    python3 bench/blaster.py DEV DST_MAC SRC_IP DST_IP SECONDS [PPS] [FLOWS] [SIZE] [KIND]

Sends SIZE-byte Ethernet/IPv6/UDP frames (default 64, the classic small-packet size without
FCS) to DST_MAC on DEV for SECONDS, at PPS frames per second (0: as fast as it can), cycling
over FLOWS source ports.  KIND "malformed" sends the same frames with an IPv6 payload length
that runs past the frame (a flood every receiver must drop).  Batches of 64 frames go out
with one sendmmsg (PACKET_QDISC_BYPASS).  Prints one JSON line: frames offered (accepted by
the kernel), errors, elapsed seconds.
"""
import json
import os
import struct
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from engine import _ring  # noqa: E402
from engine.frames import pack_frames  # noqa: E402
from engine.inet import checksum  # noqa: E402

DPORT = 9000
BATCH = 64


def frame(src_mac: bytes, dst_mac: bytes, src: bytes, dst: bytes, sport: int, size: int) -> bytes:
    payload = bytes(max(0, size - 62))
    udp = struct.pack("!HHHH", sport, DPORT, 8 + len(payload), 0) + payload
    # UDP over IPv6 needs a checksum: compute it so CN's stack would accept the datagram
    pseudo = src + dst + struct.pack("!I3xB", len(udp), 17) + udp
    udp = udp[:6] + struct.pack("!H", checksum(pseudo) or 0xFFFF) + udp[8:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + src + dst
    return dst_mac + src_mac + b"\x86\xdd" + ip6 + udp


def main(dev, dst_mac, src_ip, dst_ip, seconds, pps="0", flows="16", size="64", kind="valid"):
    import ipaddress

    src_mac = bytes.fromhex(open(f"/sys/class/net/{dev}/address").read().strip().replace(":", ""))
    dmac = bytes.fromhex(dst_mac.replace(":", ""))
    src, dst = ipaddress.IPv6Address(src_ip).packed, ipaddress.IPv6Address(dst_ip).packed
    nflows, size, pps, seconds = int(flows), int(size), float(pps), float(seconds)
    frames = [frame(src_mac, dmac, src, dst, 20000 + i % nflows, size) for i in range(BATCH * 4)]
    if kind == "malformed":                      # payload length 1000 in a 64-byte frame
        frames = [f[:18] + struct.pack("!H", 1000) + f[20:] for f in frames]
    buf, off, ln = pack_frames(frames)
    idx = [np.arange(k * BATCH, (k + 1) * BATCH, dtype=np.int64) for k in range(4)]
    tx = _ring.TxSocket(dev, qdisc_bypass=True, capacity=BATCH)
    start = time.perf_counter()
    end = start + seconds
    k = 0
    sent_batches = 0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if pps > 0:
            due = start + sent_batches * BATCH / pps
            if due > now:
                time.sleep(min(due - now, end - now))
                continue
        tx.send(buf, off, ln, idx[k])
        k = (k + 1) & 3
        sent_batches += 1
    elapsed = time.perf_counter() - start
    print(json.dumps({"offered": int(tx.sent), "errors": int(tx.errors), "seconds": elapsed}))


if __name__ == "__main__":
    if len(sys.argv) < 6:
        sys.exit(__doc__)
    main(*sys.argv[1:])
