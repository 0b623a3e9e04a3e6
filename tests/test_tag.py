"""mmr tag: the traffic control option on the packets of unmodified applications.

Unit part (no root): the packet transform against the reference parser, checksums, the
nftables text, the [[tag]] checks (one sentence, exit 2).  Privileged part, in the draft's
testbed: mmr tag on MN, an unmodified sender run as the matched uid, a capture at CN (an
AF_PACKET socket, frames read with engine/ref/parse.py), SIGKILL, a busy queue, TCP with
every byte, and the figures (cost per packet, iperf3 with and without tagging)."""
import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

from engine import constants as C
from engine import tagger
from engine.cli import main
from engine.ref.parse import parse_frame
from engine.testbed import CN_ADDR
from netlab import ROOT, in_ns, iperf, make_testbed, start_peer
from privdrop import as_user

ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x86\xdd"
SRC = bytes.fromhex("20010db8000100000000000000000010")
DST = bytes.fromhex("20010db800ff00000000000000000001")
OPT = tagger.option_body(C.SERVICE_VIDEO, 2)


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def udp6(payload=b"hello", hbh: bytes = b"", partial=False) -> bytes:
    ulen = 8 + len(payload)
    udp = struct.pack("!HHHH", 40000, 9000, ulen, 0) + payload
    pseudo = SRC + DST + struct.pack("!IxxxB", ulen, 17)
    if partial:          # CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum only
        c = _csum(SRC + DST + struct.pack("!IxxxB", ulen, 17))
    else:
        c = (~_csum(pseudo + udp) & 0xFFFF) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    nh = 0 if hbh else 17
    return struct.pack("!IHBB", 6 << 28, len(hbh) + ulen, nh, 64) + SRC + DST + hbh + udp


def l4_ok(pkt: bytes) -> bool:
    r = parse_frame(ETH + pkt)
    off = r["l4_off"] - 14
    ulen = len(pkt) - off
    return _csum(pkt[8:40] + struct.pack("!IxxxB", ulen, r["proto"]) + pkt[off:]) == 0xFFFF


# ---------------------------------------------------------------------- the packet
def test_a_new_hop_by_hop_header_carries_the_option():
    pkt = udp6(b"x" * 100)
    new, why = tagger.tag_packet(pkt, OPT, C.DEFAULT_OPTION_TYPE)
    assert why == tagger.TAGGED and len(new) == len(pkt) + 8
    r = parse_frame(ETH + new)
    assert (r["reason"], r["has_opt"], r["service"], r["preference"], r["proto"], r["dport"]) == (0, 1, 3, 2, 17, 9000)
    assert l4_ok(new)                      # the pseudo-header has no HBH: the checksum still holds


def test_the_option_is_added_to_a_hop_by_hop_header_the_packet_has():
    router_alert = bytes((17, 0, 5, 2, 0, 0, 1, 0))     # RFC 2711 + PadN
    new, why = tagger.tag_packet(udp6(b"y" * 33, hbh=router_alert), OPT, C.DEFAULT_OPTION_TYPE)
    assert why == tagger.TAGGED and new[41] == 1 and new[40] == 17
    r = parse_frame(ETH + new)
    assert (r["reason"], r["has_opt"], r["service"], r["preference"]) == (0, 1, 3, 2)
    assert l4_ok(new)


def test_already_tagged_too_big_and_jumbo_stay_as_they_are():
    mine = bytes((17, 0)) + tagger.option_body(1, 7) + b"\0"
    assert tagger.tag_packet(udp6(hbh=mine), OPT, C.DEFAULT_OPTION_TYPE) == (None, tagger.ALREADY)
    pkt = udp6(b"z" * (1500 - 48))
    assert len(pkt) == 1500
    assert tagger.tag_packet(pkt, OPT, C.DEFAULT_OPTION_TYPE, mtu=1500) == (None, tagger.TOO_BIG)
    assert tagger.tag_packet(pkt, OPT, C.DEFAULT_OPTION_TYPE, mtu=1508)[1] == tagger.TAGGED
    jumbo = bytearray(pkt)
    jumbo[4:6] = b"\0\0"
    assert tagger.tag_packet(bytes(jumbo), OPT, C.DEFAULT_OPTION_TYPE) == (None, tagger.CANNOT)
    # near 64 KiB (an MTU of 65535 on veth/tun): the tagged copy would not fit the 16-bit
    # netlink attribute that carries it back, so it goes as it is
    big = udp6(b"z" * (65523 - 48))
    assert tagger.tag_packet(big, OPT, C.DEFAULT_OPTION_TYPE)[1] == tagger.TAGGED
    bigger = udp6(b"z" * (65524 - 48))
    assert tagger.tag_packet(bigger, OPT, C.DEFAULT_OPTION_TYPE) == (None, tagger.CANNOT)


@pytest.mark.parametrize("size", [0, 1, 2, 99, 1000, 1419])
def test_an_unfinished_checksum_is_finished(size):
    new, why = tagger.tag_packet(udp6((bytes(range(256)) * 6)[:size], partial=True),
                                 OPT, C.DEFAULT_OPTION_TYPE, finish_csum=True)
    assert why == tagger.TAGGED and l4_ok(new)


def test_the_nftables_table_matches_in_the_kernel():
    from engine.config import _Loader

    class L:
        service_and_preference = _Loader.service_and_preference

        def err(self, key, problem, fix):
            raise AssertionError(f"{key}: {problem}")

        def unknown(self, *a):
            pass

        def port_range(self, key, v):
            return (v, v)

        def prefix(self, key, text):
            import ipaddress
            return ipaddress.ip_network(text)
    rules = tagger.load_tags(L(), {"tag": [{"user": 0, "proto": "tcp", "dport": 443, "service": "video"},
                                           {"group": 0, "dst": "2001:db8::/32", "preference": 3}]})
    text = tagger.table_text(rules, 100, {0: 1432, 1: 1432}, owner=True)
    assert "flags owner" in text and "hook output" in text
    assert "meta skuid 0 meta l4proto 6 th dport 443 jump t0" in text
    assert "meta skgid 0 ip6 daddr 2001:db8::/32 jump t1" in text
    assert "queue num 100 bypass" in text and "queue num 101 bypass" in text
    assert "tcp option maxseg size > 1432 tcp option maxseg size set 1432" in text
    xt = tagger.table_text(rules, 100, {0: 1432, 1: 1432}, owner=True, xt=True)
    assert "queue" not in xt and "0x00020000 accept" in xt and "chain clear" in xt


# ---------------------------------------------------------------------- bad input: one sentence, exit 2
@pytest.mark.parametrize("body,words", [
    ('[[tag]]\nuser = "no-such-user-mmr"\nservice = "video"\n', ["tag[0].user", "no user"]),
    ('[[tag]]\ngroup = "no-such-group-mmr"\nservice = "video"\n', ["tag[0].group", "no group"]),
    ('[[tag]]\ncgroup = "system.slice/no-such-mmr.service"\nservice = "video"\n', ["tag[0].cgroup", "no cgroup"]),
    ('[[tag]]\ndst = "192.0.2.0/24"\nservice = "voip"\n', ["tag[0].dst", "IPv4", "IPv6 hop-by-hop"]),
    ('[[tag]]\nuser = 0\n', ["tag[0]", "sets nothing"]),
    ('[[tag]]\nservice = "video"\n', ["tag[0]", "matches nothing"]),
    ('[[tag]]\nproto = "icmpv6"\ndport = 5\nservice = "video"\n', ["tag[0].dport", "no ports"]),
])
def test_bad_tag_rules_end_in_one_sentence(tmp_path, capsys, body, words):
    f = tmp_path / "tag.toml"
    f.write_text(body)
    assert main(["tag", "--config", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err


def test_a_full_policy_file_may_hold_tag_rules(tmp_path):
    from engine.config import load_config
    text = open(os.path.join(ROOT, "engine", "default.toml")).read()
    f = tmp_path / "p.toml"
    f.write_text(text + '\n[[tag]]\nuser = "root"\nservice = "voip"\npreference = 2\n')
    assert [(r.uid, r.service, r.preference) for r in load_config(str(f)).tags] == [(0, 2, 2)]
    assert [(r.uid, r.service) for r in tagger.load_tag_config(str(f)).tags] == [(0, 2)]


def test_help_is_a_manual_page(capsys):
    with pytest.raises(SystemExit):
        main(["tag", "--help"])
    out = capsys.readouterr().out
    for w in ("[[tag]]", "cgroup", "NFQUEUE", "bypass", "MSS", "examples:", "exit status:", "flags owner"):
        assert w in out, w


# ---------------------------------------------------------------------- in the testbed
CAPTURE = r"""
import json, socket, sys, time
sys.path.insert(0, sys.argv[3])
from engine.ref.parse import parse_frame
ports = {int(p) for p in sys.argv[1].split(",")}
DEBUG = len(sys.argv) > 4
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)       # SO_RCVBUFFORCE: keep up with a bulk transfer
s.settimeout(0.2)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
seen = {}
while time.monotonic() < end:
    try:
        frame, addr = s.recvfrom(70000)
    except socket.timeout:
        continue
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    r = parse_frame(frame)
    if r["dport"] not in ports or r["proto"] not in (6, 17):
        continue
    k = f'{r["dport"]}/{r["has_opt"]}/{r["service"]}/{r["preference"]}'
    if DEBUG and not r["has_opt"] and r["proto"] == 6:
        k += f'/flags={frame[r["l4_off"] + 13]:#x}/len={len(frame)}'
    seen[k] = seen.get(k, 0) + 1
print(json.dumps(seen), flush=True)
"""

TAG_TOML = """
[[tag]]                      # whatever nobody sends: video, QoS
user = "nobody"
service = "video"
preference = 2

[[tag]]                      # iperf3 (run as root) for the throughput figure
proto = "tcp"
dport = 5201
service = "data"
preference = 1
"""


def capture(tb, ports, seconds):
    p = subprocess.Popen(in_ns(tb, "cn", sys.executable, "-c", CAPTURE, ",".join(map(str, ports)), seconds, ROOT,
                               *(["debug"] if os.environ.get("MMR_TAG_DEBUG") else [])),
                         stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "ready"
    return p


def captured(p) -> dict:
    out, _ = p.communicate(timeout=30)
    return json.loads(out.strip().splitlines()[-1])


def as_nobody(tb, tmp_path, *args):
    return as_user(tb.ns("mn"), [sys.executable, "-m", "engine.peers", *map(str, args)], (), str(tmp_path))


def udp_as(tb, tmp_path, port, n, nobody=True):
    sink = start_peer(tb, "cn", "udp-sink", port, 3)
    argv = (as_nobody(tb, tmp_path, "udp-send", CN_ADDR, port, n, -1, -1) if nobody
            else in_ns(tb, "mn", sys.executable, "-m", "engine.peers", "udp-send", CN_ADDR, port, n, -1, -1))
    snd = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert snd.returncode == 0, snd.stderr
    out, _ = sink.communicate(timeout=10)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def tcp_as_nobody(tb, tmp_path, port, nbytes):
    sink = start_peer(tb, "cn", "tcp-sink", port)
    snd = subprocess.run(as_nobody(tb, tmp_path, "tcp-send", CN_ADDR, port, nbytes, -1, -1),
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    sink.wait(timeout=30)
    assert snd.returncode == 0, snd.stderr
    return json.loads(snd.stdout.strip().splitlines()[-1])


def start_tag(tb, cfg, *extra):
    p = subprocess.Popen(in_ns(tb, "mn", sys.executable, "-m", "engine", "tag", "--config", cfg,
                               "--stats-interval", "0", *extra), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    lines = []
    while True:
        line = p.stderr.readline()
        if not line:
            raise AssertionError("mmr tag ended before it was ready:\n" + "".join(lines))
        lines.append(line)
        if "tagging:" in line:
            return p, lines


def tables(tb) -> str:
    return tb.run("mn", "nft", "list", "tables")


@pytest.fixture(scope="module")
def bed():
    with make_testbed("tg") as tb:
        yield tb


@pytest.mark.privileged
def test_unmodified_sender_is_tagged_by_uid_and_kill_leaves_traffic_untagged(bed, tmp_path):
    cfg = tmp_path / "tag.toml"
    cfg.write_text(TAG_TOML)
    os.chmod(tmp_path, 0o755)
    p, lines = start_tag(bed, str(cfg))
    try:
        assert "MSS clamp tag[0]=1432" in lines[-1], lines     # route MTU 1500 - 68
        cap = capture(bed, [9101, 9102, 9103], 6)
        got_nobody = udp_as(bed, tmp_path, 9101, 30)
        got_root = udp_as(bed, tmp_path, 9102, 30, nobody=False)
        # a second mmr tag: the queue is taken -> one sentence, exit 2
        second = subprocess.run(in_ns(bed, "mn", sys.executable, "-m", "engine", "tag", "--config", str(cfg),
                                      "--stats-interval", "0"), capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert second.returncode == 2 and "NFQUEUE 15872 is already bound by another program" in second.stderr, \
            second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        seen = captured(cap)
        assert len(got_nobody) >= 29 and len(got_root) >= 29         # every datagram arrives, checksums good
        assert seen.get("9101/1/3/2", 0) >= 29 and "9101/0/0/0" not in seen, seen    # nobody: video, QoS
        assert seen.get("9102/0/0/0", 0) >= 29 and not any(k.startswith("9102/1") for k in seen), seen
        # SIGKILL: the owned tables go with mmr, and traffic flows untagged
        assert "mmrtag" in tables(bed)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        deadline = time.monotonic() + 5
        while "mmrtag" in tables(bed) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "mmrtag" not in tables(bed), tables(bed)
        cap = capture(bed, [9103], 4)
        got = udp_as(bed, tmp_path, 9103, 30)
        seen = captured(cap)
        assert len(got) >= 29 and seen.get("9103/0/0/0", 0) >= 29 and not any(k.startswith("9103/1") for k in seen)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.mark.privileged
def test_tcp_of_a_tagged_flow_arrives_whole_and_figures(bed, tmp_path, capsys):
    cfg = tmp_path / "tag.toml"
    cfg.write_text(TAG_TOML)
    os.chmod(tmp_path, 0o755)
    plain_bps = iperf(bed, "mn", "cn", CN_ADDR, 3)
    p, lines = start_tag(bed, str(cfg))
    try:
        cap = capture(bed, [9201], 25)
        r = tcp_as_nobody(bed, tmp_path, 9201, 8_000_000)
        assert r["answer"] == r["expect"], r                  # every byte, in order (MSS clamp: no drops)
        tagged_bps = iperf(bed, "mn", "cn", CN_ADDR, 3)
        assert p.poll() is None, "mmr tag died under load (traffic went on untagged through bypass)"
    finally:
        p.send_signal(signal.SIGTERM)
        _, rest = p.communicate(timeout=15)
    assert p.returncode == 0 and "Traceback" not in rest and "internal error" not in rest, rest
    seen = captured(cap)
    # data segments all carry the option; the kernel's own last ACK (from TIME_WAIT, no
    # socket owner) may not
    assert seen.get("9201/1/3/2", 0) > 50 and seen.get("9201/0/0/0", 0) <= 2, seen
    summary = [line for line in rest.splitlines() if "tag: packets=" in line][-1]
    c = dict(kv.split("=") for kv in summary.split("tag: ")[1].split())
    assert int(c["tagged"]) > 1000 and int(c["too_big"]) == 0 and int(c["cannot"]) == 0, summary
    assert "mmrtag" not in tables(bed)                        # a clean stop removes the tables too
    with capsys.disabled():
        print(f"\nmmr tag figures (testbed): per packet {float(c['us_per_packet']):.1f} us in mmr + "
              f"{float(c['verdict_us_per_packet']):.1f} us in the verdict call (the kernel sends the packet on "
              f"inside it); {c['tagged']} tagged in {c['batches']} batches; iperf3 MN->CN untagged "
              f"{plain_bps / 1e6:.0f} Mbit/s, tagged {tagged_bps / 1e6:.0f} Mbit/s")


def test_cost_of_tagging_one_packet(capsys):
    """mmr's work per packet, alone: 1500-byte packets with an unfinished checksum, and
    64 KiB TCP super-frames."""
    small = udp6(b"s" * 1452, partial=True)
    big = struct.pack("!IHBB", 6 << 28, 65000, 6, 64) + SRC + DST + bytes(65000)
    out = {}
    for name, pkt, fin in (("1500 B, checksum finished", small, True), ("64 KiB super-frame", big, False)):
        n = 20000 if fin else 5000
        t0 = time.perf_counter()
        for _ in range(n):
            new, why = tagger.tag_packet(pkt, OPT, C.DEFAULT_OPTION_TYPE, finish_csum=fin, mtu=0)
        out[name] = (time.perf_counter() - t0) / n * 1e6
        assert why == tagger.TAGGED
    assert out["1500 B, checksum finished"] < 200
    with capsys.disabled():
        print("\nmmr tag figures (tag_packet alone): "
              + ", ".join(f"{k}: {v:.2f} us" for k, v in out.items()))


@pytest.mark.privileged
def test_a_cgroup_rule_tags_what_the_unit_sends(bed, tmp_path):
    """cgroup = a systemd unit's path: a sender put in a fresh cgroup v2 group is tagged.
    (Run with nsenter, not 'ip netns exec': that one mounts a fresh /sys without the
    cgroup hierarchy, where neither mmr nor nft could find the group.)"""
    root = tagger.cgroup2_root()
    name = f"mmr-tag-test-{os.getpid()}"
    group = os.path.join(root, name)
    os.mkdir(group)
    cfg = tmp_path / "tag.toml"
    cfg.write_text(f'[[tag]]\ncgroup = "{name}"\nproto = "udp"\nservice = "voip"\npreference = 3\n')
    net = f"--net=/run/netns/{bed.ns('mn')}"
    p = subprocess.Popen(["nsenter", net, sys.executable, "-m", "engine", "tag", "--config", str(cfg),
                          "--stats-interval", "0"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while "tagging:" not in (line := p.stderr.readline()):
            assert line, "mmr tag ended before it was ready:\n" + "".join(lines)
            lines.append(line)
        cap = capture(bed, [9301, 9302], 5)
        for port, inside in ((9301, True), (9302, False)):
            sink = start_peer(bed, "cn", "udp-sink", port, 3)
            enter = f"echo $$ > {group}/cgroup.procs && " if inside else ""
            snd = subprocess.run(["nsenter", net, "sh", "-c", enter + f"exec {sys.executable} -m engine.peers "
                                  f"udp-send {CN_ADDR} {port} 20 -1 -1"], capture_output=True, text=True,
                                 cwd=ROOT, timeout=60)
            assert snd.returncode == 0, snd.stderr
            sink.communicate(timeout=10)
        seen = captured(cap)
        assert seen.get("9301/1/2/3", 0) >= 19 and "9301/0/0/0" not in seen, seen     # in the unit: VoIP
        assert seen.get("9302/0/0/0", 0) >= 19 and not any(k.startswith("9302/1") for k in seen), seen
    finally:
        p.terminate()
        p.communicate(timeout=15)
        deadline = time.monotonic() + 5
        while True:
            try:
                os.rmdir(group)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
