"""Send one neighbour solicitation on a device and report the advertisements that answer it
(a test helper, run inside a namespace): ``python3 tests/ndprobe.py DEV SRC TARGET [SECONDS]``
(SRC :: probes as duplicate address detection does) prints JSON {"answers": [{"mac", "src",
"dst", "eth_dst", "flags", "tlla", "checksum_ok"}...]}.  Built with dpkt, apart from
the code under test."""
import ipaddress
import json
import select
import socket
import sys
import time

import dpkt


def main(dev: str, src: str, target: str, wait: float = 1.0) -> dict:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
    s.bind((dev, 0x86DD))
    mac = s.getsockname()[4]
    t = ipaddress.IPv6Address(target).packed
    sn = ipaddress.IPv6Address("ff02::1:ff00:0").packed[:13] + t[13:]      # solicited-node group
    slla = b"" if ipaddress.IPv6Address(src).is_unspecified else bytes([1, 1]) + mac   # DAD: none
    icmp = dpkt.icmp6.ICMP6(type=135, code=0, data=bytes(4) + t + slla)
    ip = dpkt.ip6.IP6(src=ipaddress.IPv6Address(src).packed, dst=sn, nxt=58, hlim=255,
                      plen=len(bytes(icmp)), data=icmp)
    s.send(bytes(dpkt.ethernet.Ethernet(dst=b"\x33\x33" + sn[12:], src=mac, type=0x86DD, data=ip)))
    answers = []
    end = time.monotonic() + wait
    while time.monotonic() < end:
        if not select.select([s], [], [], max(0.0, end - time.monotonic()))[0]:
            break
        frame, addr = s.recvfrom(2048)
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        eth = dpkt.ethernet.Ethernet(frame)
        if not isinstance(eth.data, dpkt.ip6.IP6) or eth.data.nxt != 58:
            continue
        m = eth.data.data
        body = bytes(m.data)
        if m.type != 136 or body[4:20] != t:
            continue
        again = dpkt.ip6.IP6(bytes(eth.data))
        sent, again.data.sum = again.data.sum, 0
        answers.append({"mac": eth.src.hex(), "src": str(ipaddress.IPv6Address(eth.data.src)),
                        "dst": str(ipaddress.IPv6Address(eth.data.dst)), "eth_dst": eth.dst.hex(),
                        "flags": body[0] >> 5, "tlla": body[22:28].hex() if len(body) >= 28 else None,
                        "checksum_ok": dpkt.ip6.IP6(bytes(again)).data.sum == sent})
    return {"answers": answers}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3], *(float(x) for x in sys.argv[4:]))))
