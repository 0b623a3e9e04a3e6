"""mmr synth: valid, deterministic traces with the requested mix."""
import hashlib
import os
import struct
import subprocess
import sys

import dpkt
import pytest

from engine.synth import generate


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    p = tmp_path_factory.mktemp("synth") / "mix.pcap"
    s = generate(str(p), packets=20_000, flows=600, seed=3, ipv4_share=0.25, tagged_share=0.6)
    return str(p), s


def frames(path):
    with open(path, "rb") as f:
        return [(ts, buf) for ts, buf in dpkt.pcap.Reader(f)]


def test_exact_packet_count_and_readable_by_pcapy(trace):
    import pcapy

    path, s = trace
    assert s["packets"] == 20_000 == len(frames(path))
    r = pcapy.open_offline(path)
    n = 0
    while True:
        h, _ = r.next()
        if h is None:
            break
        n += 1
    assert n == 20_000 and r.datalink() == 1


def test_every_frame_parses_in_dpkt_and_timestamps_grow(trace):
    path, _ = trace
    last = 0
    kinds = {"hbh": 0, "frag6": 0, "frag4": 0, "v4": 0, "tcp": 0, "udp": 0, "icmp6": 0}
    for ts, buf in frames(path):
        assert ts >= last
        last = ts
        e = dpkt.ethernet.Ethernet(buf)
        ip = e.data
        if isinstance(ip, dpkt.ip6.IP6):
            assert ip.plen == len(buf) - 14 - 40
            if 0 in ip.extension_hdrs and ip.extension_hdrs[0] is not None:
                kinds["hbh"] += 1
            if 44 in ip.extension_hdrs and ip.extension_hdrs[44] is not None:
                kinds["frag6"] += 1
            elif isinstance(ip.data, dpkt.tcp.TCP):
                kinds["tcp"] += 1
            elif isinstance(ip.data, dpkt.udp.UDP):
                kinds["udp"] += 1
            elif isinstance(ip.data, dpkt.icmp6.ICMP6):
                kinds["icmp6"] += 1
        else:
            assert isinstance(ip, dpkt.ip.IP) and ip.len == len(buf) - 14
            kinds["v4"] += 1
            if ip.mf or ip.offset:
                kinds["frag4"] += 1
    assert all(v > 0 for v in kinds.values()), kinds


def test_shares_and_classes(trace):
    _, s = trace
    assert 0.10 < s["ipv4"] / s["packets"] < 0.45
    assert s["tagged"] > 0 and s["untagged"] > 0 and s["fragments"] > 0
    assert all(v > 0 for v in s["classes"].values())


def test_option_bytes_are_in_place(trace):
    """Decode the hop-by-hop option independently with struct."""
    path, _ = trace
    seen = 0
    for _, buf in frames(path):
        if buf[12:14] != b"\x86\xdd" or buf[14 + 6] != 0:
            continue
        hbh = buf[54:]
        hlen = (hbh[1] + 1) * 8
        i = 2
        found = None
        while i < hlen:
            t = hbh[i]
            if t == 0:
                i += 1
                continue
            ln = hbh[i + 1]
            if t == 0x3E:
                assert ln == 3
                found = (hbh[i + 2], struct.unpack("!H", hbh[i + 3:i + 5])[0])
            i += 2 + ln
        assert i == hlen and found is not None
        assert found[1] in (0, 1, 2, 3, 7)
        seen += 1
    assert seen > 1000


def test_fragments_reassemble(trace):
    path, _ = trace
    groups = {}
    for _, buf in frames(path):
        e = dpkt.ethernet.Ethernet(buf)
        ip = e.data
        if isinstance(ip, dpkt.ip.IP) and (ip.mf or ip.offset):
            key = (ip.src, ip.id)
            groups.setdefault(key, []).append((ip.offset, bytes(ip.data), bool(ip.mf)))
    assert groups
    for parts in groups.values():
        parts.sort()
        data = b"".join(p[1] for p in parts)
        assert not parts[-1][2] and parts[0][0] == 0
        udp = dpkt.udp.UDP(data)
        assert udp.ulen == len(data)


def test_deterministic(tmp_path):
    a, b, c = tmp_path / "a.pcap", tmp_path / "b.pcap", tmp_path / "c.pcap"
    generate(str(a), packets=3000, flows=100, seed=5)
    generate(str(b), packets=3000, flows=100, seed=5)
    generate(str(c), packets=3000, flows=100, seed=6)
    h = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert h(a) == h(b) != h(c)


def test_cli(tmp_path):
    out = tmp_path / "x.pcap"
    ok = subprocess.run([sys.executable, "-m", "engine", "synth", str(out), "--packets", "500"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "500 frames" in ok.stdout and out.exists()
    for bad in (["--packets", "-3"], ["--ipv4-share", "1.5"], ["--tagged-share", "x"]):
        p = subprocess.run([sys.executable, "-m", "engine", "synth", str(out)] + bad,
                           capture_output=True, text=True)
        assert p.returncode == 2 and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "engine", "synth", "/nonexistent/dir/x.pcap",
                        "--packets", "5"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "cannot write" in p.stderr
    h = subprocess.run([sys.executable, "-m", "engine", "synth", "--help"], capture_output=True, text=True)
    assert "VoIP" in h.stdout and "--tagged-share" in h.stdout


def ones_sum_words(data: bytes) -> int:
    """One's complement sum, word by word with end-around carry (independent of engine/)."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def test_every_checksum_is_valid(trace):
    """IPv4 header, ICMP, and UDP/TCP/ICMPv6 over the pseudo-header, fragments reassembled
    first: a packet with a valid checksum sums to 0xFFFF.  (tshark flagged them all before.)"""
    path, _ = trace
    datagrams = {}          # (v6?, src, dst, ident, proto) -> [(offset, more, bytes)]
    checked = {"udp": 0, "tcp": 0, "icmp6": 0, "icmp": 0, "ip": 0, "reassembled": 0}
    whole = []
    for _, buf in frames(path):
        if buf[12:14] == b"\x08\x00":
            ihl = (buf[14] & 15) * 4
            hdr = buf[14:14 + ihl]
            assert ones_sum_words(hdr) == 0xFFFF
            checked["ip"] += 1
            src, dst, proto = hdr[12:16], hdr[16:20], hdr[9]
            frag = struct.unpack("!H", hdr[6:8])[0]
            body = buf[14 + ihl:14 + struct.unpack("!H", hdr[2:4])[0]]
            if frag & 0x3FFF:
                key = (False, src, dst, struct.unpack("!H", hdr[4:6])[0], proto)
                datagrams.setdefault(key, []).append(((frag & 0x1FFF) * 8, bool(frag & 0x2000), body))
            else:
                whole.append((False, src, dst, proto, body))
            continue
        assert buf[12:14] == b"\x86\xdd"
        src, dst, nh = buf[22:38], buf[38:54], buf[20]
        pos, frag = 54, None
        while nh in (0, 44):
            if nh == 44:
                off_m, ident = struct.unpack("!HI", buf[pos + 2:pos + 8])
                frag = (off_m & ~7, bool(off_m & 1), ident)
                nh, pos = buf[pos], pos + 8
            else:
                nh, pos = buf[pos], pos + (buf[pos + 1] + 1) * 8
        body = buf[pos:]
        if frag:
            datagrams.setdefault((True, src, dst, frag[2], nh), []).append((frag[0], frag[1], body))
        else:
            whole.append((True, src, dst, nh, body))
    for (v6, src, dst, _, proto), parts in datagrams.items():
        parts.sort()
        if parts[0][0] != 0 or parts[-1][1]:
            continue                     # the trace ended before its last fragment
        whole.append((v6, src, dst, proto, b"".join(p[2] for p in parts)))
        checked["reassembled"] += 1
    for v6, src, dst, proto, body in whole:
        if proto == 1:
            assert ones_sum_words(body) == 0xFFFF
            checked["icmp"] += 1
            continue
        if v6:
            pseudo = src + dst + struct.pack("!IxxxB", len(body), proto)
        else:
            pseudo = src + dst + struct.pack("!xBH", proto, len(body))
        assert ones_sum_words(pseudo + body) == 0xFFFF, (proto, body[:8].hex())
        if proto == 17:
            assert body[6:8] != b"\0\0"          # 0 would mean "not computed"
        checked[{17: "udp", 6: "tcp", 58: "icmp6"}[proto]] += 1
    assert all(v > 0 for v in checked.values()), checked


def test_dash_writes_the_capture_to_stdout(tmp_path):
    path = tmp_path / "x.pcap"
    generate(str(path), packets=300, flows=30, seed=9)
    p = subprocess.run([sys.executable, "-m", "engine", "synth", "-", "--packets", "300", "--flows", "30",
                        "--seed", "9"], capture_output=True)
    assert p.returncode == 0 and p.stdout == path.read_bytes()
    assert b"wrote standard output: 300 frames" in p.stderr
    assert not (tmp_path / "-").exists()


def test_dash_refuses_a_terminal():
    import pty

    master, slave = pty.openpty()
    try:
        p = subprocess.run([sys.executable, "-m", "engine", "synth", "-", "--packets", "5"],
                           stdout=slave, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert p.returncode == 2 and "standard output is a terminal" in p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_dash_into_a_closed_pipe_is_quiet():
    p = subprocess.Popen([sys.executable, "-m", "engine", "synth", "-", "--packets", "200000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(100)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0 and err == ""
