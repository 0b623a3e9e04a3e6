"""Small programs the demo and the tests run on the testbed hosts, each inside a namespace
(``ip netns exec NS python3 -m engine.peers CMD ...``).

  udp-sink PORT SECONDS          one JSON line per datagram (ingress device, hop limit, time),
                                 printed after SECONDS or SIGTERM
  udp-send DST PORT N SVC PREF [SIZE] [GAP_S] [DSCP]
                                 send N datagrams tagged with (SVC, PREF) (-1 -1: untagged),
                                 with that DSCP (IPv4 has no option to carry)
  udp-count PORT SECONDS         count datagrams until SECONDS or SIGTERM, print JSON totals
                                 and how many came from each source address
  echo-server PORT SECONDS [ADDR] UDP echo on ADDR (default ::): every datagram back to its
                                 sender; on SIGTERM or after SECONDS prints JSON {"answered",
                                 "sources"}
  echo-client DST PORT N [SIZE] [DEV]
                                 N requests (of SIZE bytes: fragments above the MTU), print
                                 JSON {"sent", "answered", "rtt_ms"}; DEV: the socket bound to
                                 that device (SO_BINDTODEVICE), its local "port" printed too
  tcp-sink PORT                  accept one connection, answer "<bytes> <sha256>", print the
                                 longest pause between arrivals
  reach DST [SECONDS]            one ICMPv6/ICMP echo answered in time: exit 0 (no ping needed)
  tcp-send DST PORT NBYTES [SVC PREF] [PACE_MS]
                                 send NBYTES of a fixed pseudo-random stream (tagged unless
                                 SVC is -1; 64 KiB every PACE_MS ms), print the answer
  tcp-serve PORT NBYTES          accept one connection and send it NBYTES of that stream
  tcp-fetch DST PORT NBYTES [DEV]
                                 connect, read to the end, print JSON {"bytes", "ok"} (ok: the
                                 stream, every byte; DEV: bound to that device, "port" too)
  ttl-probe DST PORT TTL         one UDP datagram with that TTL / hop limit, print JSON with
                                 the ICMP error that came back {"origin", "type", "code", "from"}
  ra-send DEV LIFETIME ADDR...   one router advertisement out of DEV to all nodes, with an
                                 RDNSS option (RFC 8106) naming ADDRs for LIFETIME seconds;
                                 router lifetime 0 (no default route), no prefixes
"""
import hashlib
import ipaddress
import json
import os
import signal
import socket
import struct
import sys
import time

from engine.inet import checksum  # noqa: E402
from engine._kernel import (ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST, ICMP_ECHO, ICMP_ECHOREPLY,  # noqa: E402
                            IPV6_HOPLIMIT, IPV6_PKTINFO, IPV6_RECVHOPLIMIT, IPV6_RECVPKTINFO)


def udp_sink(port, seconds):
    """One JSON line per datagram (ingress device, hop limit, arrival time), printed when
    SECONDS are over: printing as they come could block on a full pipe and lose datagrams."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
    s.bind(("::", int(port)))
    s.settimeout(0.2)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))     # SIGTERM: stop and report
    print("ready", flush=True)
    got = []
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end and not stop:
        try:
            data, anc, _, addr = s.recvmsg(2048, 256)
        except (socket.timeout, InterruptedError):
            continue
        dev, hl = None, None
        for level, typ, val in anc:
            if typ == IPV6_PKTINFO:
                dev = struct.unpack("16sI", val[:20])[1]
            elif typ == IPV6_HOPLIMIT:
                hl = struct.unpack("i", val[:4])[0]
        got.append((dev, hl, data[:40], addr[0], time.time()))
    names = {}
    for dev, hl, data, src, t in got:
        if dev not in names:
            names[dev] = socket.if_indextoname(dev) if dev else None
        print(json.dumps({"dev": names[dev], "hlim": hl, "data": data.decode(errors="replace"),
                          "src": src, "t": t}))


def udp_count(port, seconds):
    """Count datagrams and bytes until SECONDS pass or SIGTERM; print one JSON line."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("::", int(port)))
    s.settimeout(0.1)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    print("ready", flush=True)
    n = nbytes = 0
    sources = {}
    end = time.monotonic() + float(seconds)
    while not stop and time.monotonic() < end:
        try:
            data, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        except InterruptedError:
            break
        nbytes += len(data)
        n += 1
        sources[addr[0]] = sources.get(addr[0], 0) + 1
    s.setblocking(False)
    while True:                      # what already arrived counts too
        try:
            data, addr = s.recvfrom(65535)
        except BlockingIOError:
            break
        nbytes += len(data)
        n += 1
        sources[addr[0]] = sources.get(addr[0], 0) + 1
    print(json.dumps({"datagrams": n, "bytes": nbytes, "sources": sources}), flush=True)


def udp_send(dst, port, n, svc, pref, size=0, gap=0.002, dscp=-1):
    from engine.tagging import tag_socket

    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    if int(svc) >= 0:
        tag_socket(s, int(svc), int(pref))
    if int(dscp) >= 0:               # IP_TOS serves an IPv4-mapped destination, TCLASS IPv6
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, int(dscp) << 2)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, int(dscp) << 2)
    for i in range(int(n)):
        head = f"{svc}/{pref}/{i}".encode()
        s.sendto(head + b"." * max(0, int(size) - len(head)), (dst, int(port)))
        time.sleep(float(gap))


def echo_server(port, seconds, bind="::"):
    # bound to the service address, replies leave from it (not from the egress interface's)
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind((bind, int(port)))
    s.settimeout(0.2)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))     # SIGTERM: stop and report
    print("ready", flush=True)
    answered, sources = 0, {}
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end and not stop:
        try:
            data, addr = s.recvfrom(65535)
        except (socket.timeout, InterruptedError):
            continue
        s.sendto(data, addr)
        answered += 1
        sources[addr[0]] = sources.get(addr[0], 0) + 1
    print(json.dumps({"answered": answered, "sources": sources}), flush=True)


def bind_device(s, dev):
    """The socket on one device, as an application bound to an interface (not to the VI)."""
    if dev:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())


def echo_client(dst, port, n, size=0, dev=""):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    bind_device(s, dev)
    s.connect((dst, int(port)))      # answers from any other address are not answers
    s.settimeout(1.0)
    answered, rtts = 0, []
    for i in range(int(n)):
        msg = f"echo {i}".encode()
        msg += b"." * max(0, int(size) - len(msg))
        t0 = time.monotonic()
        s.send(msg)
        try:
            while s.recv(65535) != msg:
                pass
        except socket.timeout:
            continue
        answered += 1
        rtts.append((time.monotonic() - t0) * 1000)
        time.sleep(0.02)
    print(json.dumps({"sent": int(n), "answered": answered,
                      "rtt_ms": round(sorted(rtts)[len(rtts) // 2], 3) if rtts else None,
                      **({"port": s.getsockname()[1]} if dev else {})}))


def accept_one(port):
    """Listen on PORT (both families), say "ready", return the first connection."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", int(port)))
    s.listen(1)
    print("ready", flush=True)
    c, _ = s.accept()
    s.close()
    return c


def tcp_serve(port, nbytes):
    c = accept_one(port)
    c.sendall(stream(int(nbytes)))
    c.close()


def tcp_fetch(dst, port, nbytes, dev=""):
    c = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    bind_device(c, dev)
    c.settimeout(30)
    c.connect((dst, int(port)))
    got = bytearray()
    while True:
        d = c.recv(1 << 16)
        if not d:
            break
        got += d
    print(json.dumps({"bytes": len(got), "ok": bytes(got) == stream(int(nbytes)),
                      **({"port": c.getsockname()[1]} if dev else {})}))


def ttl_probe(dst, port, ttl):
    """The ICMP error a datagram with a small TTL earns (IP_RECVERR / IPV6_RECVERR)."""
    v6 = ipaddress.ip_address(dst.removeprefix("::ffff:")).version == 6 and not dst.startswith("::ffff:")
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, int(ttl))
        s.setsockopt(socket.IPPROTO_IPV6, 25, 1)                  # IPV6_RECVERR
    else:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, int(ttl))
        s.setsockopt(socket.IPPROTO_IP, 11, 1)                    # IP_RECVERR
    s.sendto(b"probe", (dst.removeprefix("::ffff:"), int(port)))
    end = time.monotonic() + 3
    while time.monotonic() < end:
        try:
            _, anc, _, _ = s.recvmsg(512, 512, 0x2000)            # MSG_ERRQUEUE
        except BlockingIOError:
            time.sleep(0.02)
            continue
        for level, typ, data in anc:
            # struct sock_extended_err: errno u32, origin u8, type u8, code u8, pad u8, info, data;
            # then the offender's address (sockaddr_in / sockaddr_in6)
            errno_, origin, etype, code = struct.unpack_from("=IBBB", data, 0)
            off = 16
            fam_ = struct.unpack_from("=H", data, off)[0]
            frm = (socket.inet_ntop(socket.AF_INET6, data[off + 8:off + 24]) if fam_ == socket.AF_INET6
                   else socket.inet_ntop(socket.AF_INET, data[off + 4:off + 8]))
            print(json.dumps({"origin": origin, "type": etype, "code": code, "from": frm, "errno": errno_}))
            return
    print(json.dumps({"origin": None}))
    s.close()


def stream(n):
    out = bytearray()
    block = hashlib.sha256(b"mmr").digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])


def tcp_sink(port):
    c = accept_one(port)
    h = hashlib.sha256()
    total = 0
    last, gap = time.monotonic(), 0.0
    while True:
        d = c.recv(65536)
        now = time.monotonic()
        if not d:
            break
        gap = max(gap, now - last)
        last = now
        h.update(d)
        total += len(d)
    c.sendall(f"{total} {h.hexdigest()}".encode())
    print(json.dumps({"max_gap_ms": round(gap * 1000, 2)}), flush=True)
    c.close()


def tcp_send(dst, port, nbytes, svc=-1, pref=-1, pace_ms=0):
    """Tagged with (svc, pref) unless -1; with pace_ms, 64 KiB every pace_ms milliseconds."""
    from engine.tagging import tag_socket

    data = stream(int(nbytes))
    c = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    if int(svc) >= 0:
        tag_socket(c, int(svc), int(pref))
    c.settimeout(30)
    c.connect((dst, int(port)))
    if float(pace_ms) > 0:
        for k in range(0, len(data), 65536):
            c.sendall(data[k:k + 65536])
            time.sleep(float(pace_ms) / 1000)
    else:
        c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    answer = c.recv(200).decode()
    print(json.dumps({"answer": answer, "expect": f"{len(data)} {hashlib.sha256(data).hexdigest()}"}))


def ra_send(dev, lifetime, *addrs):
    """A raw ICMPv6 socket (the kernel fills the checksum); hop limit 255 and a link-local
    source, or receivers ignore it (RFC 4861 6.1.2)."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 0, 0, 0)       # type, code, sum, hop limit, flags, lifetime 0
    servers = b"".join(socket.inet_pton(socket.AF_INET6, a) for a in addrs)
    rdnss = struct.pack("!BBHI", 25, 1 + 2 * len(addrs), 0, int(lifetime)) + servers
    s.sendto(ra + rdnss, ("ff02::1", 0, 0, socket.if_nametoindex(dev)))


def reach(dst, seconds=1.0):
    """One ICMPv6/ICMP echo to dst (a raw socket: root), answered within SECONDS: exit 0,
    else 1.  The testbed checks itself with it, so it needs no ping program."""
    ip = ipaddress.ip_address(dst)
    v6 = ip.version == 6
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                      socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    body = struct.pack("!BBHHH", ICMP6_ECHO_REQUEST if v6 else ICMP_ECHO, 0, 0, ident, 1) + b"mmr-reach"
    if not v6:
        body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    s.sendto(body, (dst, 0))
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            data = s.recv(2048)
        except socket.timeout:
            break
        if not v6:
            data = data[(data[0] & 0x0F) * 4:]
        if len(data) >= 8 and data[0] == (ICMP6_ECHO_REPLY if v6 else ICMP_ECHOREPLY) and \
                struct.unpack_from("!H", data, 4)[0] == ident:
            sys.exit(0)
    sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    {"udp-sink": udp_sink, "udp-send": udp_send, "tcp-sink": tcp_sink, "tcp-send": tcp_send,
     "echo-server": echo_server, "udp-count": udp_count, "echo-client": echo_client, "reach": reach,
     "tcp-serve": tcp_serve, "tcp-fetch": tcp_fetch, "ttl-probe": ttl_probe, "ra-send": ra_send}[cmd](*args)
