"""Transfers for the host-mode offload tests, run inside a testbed namespace
(``ip netns exec NS python3 tests/tcpxfer.py CMD ...``, cwd the repository).

  sink PORT BIND                 accept one TCP connection on BIND (IPv4 or IPv6), answer
                                 "<bytes> <sha256>" once the sender is done
  send DST PORT NBYTES [SRC]     send NBYTES of engine.peers' stream from SRC (if given),
                                 print JSON {"answer", "expect"}
  usend DST PORT SEG N ROUNDS    ROUNDS UDP sends of N segments of SEG bytes each with
                                 UDP_SEGMENT (one GSO super-frame each), segment k of round
                                 r starting with "r.k."
"""
import hashlib
import ipaddress
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from engine.peers import stream  # noqa: E402

UDP_SEGMENT = 103          # <linux/udp.h>


def family(addr):
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def sink(port, bind):
    s = socket.socket(family(bind), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((bind, int(port)))
    s.listen(1)
    print("ready", flush=True)
    c, _ = s.accept()
    h, total = hashlib.sha256(), 0
    while True:
        d = c.recv(1 << 20)
        if not d:
            break
        h.update(d)
        total += len(d)
    c.sendall(f"{total} {h.hexdigest()}".encode())
    c.close()


def send(dst, port, nbytes, src=None):
    data = stream(int(nbytes))
    c = socket.socket(family(dst), socket.SOCK_STREAM)
    if src:
        c.bind((src, 0))
    c.settimeout(60)
    c.connect((dst, int(port)))
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    answer = c.recv(200).decode()
    print(json.dumps({"answer": answer, "expect": f"{len(data)} {hashlib.sha256(data).hexdigest()}"}))


def usend(dst, port, seg, n, rounds):
    seg, n = int(seg), int(n)
    s = socket.socket(family(dst), socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, seg)
    for r in range(int(rounds)):
        buf = b"".join(f"{r}.{k}.".encode().ljust(seg, b"x") for k in range(n))
        s.sendto(buf, (dst, int(port)))
        time.sleep(0.01)


if __name__ == "__main__":
    {"sink": sink, "send": send, "usend": usend}[sys.argv[1]](*sys.argv[2:])
