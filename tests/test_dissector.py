"""contrib/wireshark/mmr.lua against mmr's own parser (engine/ref/parse.py, the oracle).

tshark decodes captures with the Lua dissector loaded; every frame where the engine's
reference parser finds the traffic control option must be one where tshark shows it, with
the same service type and preference, and no other frame may carry it.

tshark is required, not optional: .ci/run installs it (apt package "tshark"), so a missing
tshark fails these tests instead of skipping them.  On a developer machine:
``apt-get install -y tshark`` (answer "no" to the setuid question).

Running as root: Wireshark refuses Lua scripts for the superuser unless its init.lua says
``run_user_scripts_when_superuser = true`` (Debian's does, and CI runs as root).  If a build
refuses, the "mmr" fields are unknown and the filters below fail with an error naming them,
so this surfaces as a failure too.
"""
import os
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET

import dpkt
import pytest

from engine import constants as C
from engine.config import BUILTIN_POLICIES
from engine.ref.parse import parse_frame

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUA = os.path.join(ROOT, "contrib", "wireshark", "mmr.lua")


def _tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        pytest.fail("tshark is not installed (apt-get install -y tshark); .ci/run installs it")
    return path


def tshark(pcap, *args) -> str:
    res = subprocess.run([_tshark(), "-n", "-X", f"lua_script:{LUA}", "-r", str(pcap), *args],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"tshark failed ({res.returncode}): {res.stderr}"
    assert "Lua" not in res.stderr and "mmr.lua" not in res.stderr, res.stderr   # script errors
    return res.stdout


def fields(pcap, display_filter, *extra) -> list[list[str]]:
    out = tshark(pcap, "-Y", display_filter, "-T", "fields", "-e", "frame.number",
                 "-e", "mmr.service", "-e", "mmr.service_type", "-e", "mmr.preference", *extra)
    return [line.split("\t") for line in out.splitlines() if line]


def oracle(pcap, option_type=C.DEFAULT_OPTION_TYPE) -> dict[int, tuple[int, int]]:
    """frame number (1-based, as tshark) -> (service, preference) where the engine reads the option."""
    found = {}
    with open(pcap, "rb") as f:
        for i, (_, buf) in enumerate(dpkt.pcap.Reader(f), start=1):
            r = parse_frame(buf, option_type)
            if r["has_opt"]:
                found[i] = (int(r["service"]), int(r["preference"]))
    return found


def service_name(s: int) -> str:
    return C.SERVICE_NAMES[s] if s < C.N_SERVICES else "reserved"


def decoded(rows) -> dict[int, tuple[int, int]]:
    return {int(n): (int(st), int(p)) for n, _, st, p in rows}


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    """A trace written by ``mmr synth`` (the command line, as an operator would)."""
    p = tmp_path_factory.mktemp("dissector") / "mix.pcap"
    subprocess.run([sys.executable, "-m", "engine", "synth", str(p), "--packets", "4000", "--flows", "300",
                    "--seed", "5", "--tagged-share", "0.6"], check=True, capture_output=True, cwd=ROOT)
    return p


def test_every_tagged_frame_decoded_as_the_engine_reads_it(mix):
    want = oracle(mix)
    # the trace exercises the whole value space, so the comparison below means something
    assert {s for s, _ in want.values()} >= {0, 1, 2, 3} and any(s >= 4 for s, _ in want.values())
    assert {p for _, p in want.values()} >= {0, 1, 2, 3, 7}
    rows = fields(mix, "mmr")
    assert decoded(rows) == want
    for n, name, st, _ in rows:
        assert name == service_name(int(st)), f"frame {n}"


def test_filter_on_service_name(mix):
    want = sorted(n for n, (s, _) in oracle(mix).items() if s == C.SERVICE_VIDEO)
    assert want
    rows = fields(mix, 'mmr.service == "video"')
    assert [int(r[0]) for r in rows] == want
    assert {r[1] for r in rows} == {"video"}


def test_names_are_the_engines(mix):
    """The service and preference names tshark shows are mmr's: SERVICE_NAMES and the names
    of the built-in policies (engine/config.py)."""
    want = oracle(mix)
    root = ET.fromstring(tshark(mix, "-Y", "mmr", "-T", "pdml", "-J", "mmr"))
    seen = 0
    for pkt in root.iter("packet"):
        num = int(next(f for f in pkt.iter("field") if f.get("name") == "num").get("show"))
        by = {f.get("name"): f for f in pkt.iter("field") if f.get("name", "").startswith("mmr.")}
        s, p = want[num]
        assert by["mmr.service"].get("show") == service_name(s)
        if s < C.N_SERVICES:
            assert by["mmr.service_type"].get("showname") == f"Service type: {C.SERVICE_NAMES[s]} ({s})"
        if p in BUILTIN_POLICIES:
            assert by["mmr.preference"].get("showname") == f"Preference: {BUILTIN_POLICIES[p].name} ({p})"
        seen += 1
    assert seen == len(want)
    # value-string names work in filters too
    for p, pol in BUILTIN_POLICIES.items():
        got = [int(r[0]) for r in fields(mix, f'mmr.preference == "{pol.name}"')]
        assert got == sorted(n for n, (_, q) in want.items() if q == p), pol.name


def test_option_type_preference(tmp_path):
    p = tmp_path / "t21.pcap"
    subprocess.run([sys.executable, "-m", "engine", "synth", str(p), "--packets", "1500", "--flows", "100",
                    "--seed", "9", "--option-type", "0x21"], check=True, capture_output=True, cwd=ROOT)
    want = oracle(p, 0x21)
    assert want and not oracle(p)
    assert fields(p, "mmr") == []                               # default 0x3E: nothing
    assert decoded(fields(p, "mmr", "-o", "mmr.option_type:33")) == want


# ----------------------------------------------------------------------- hand-built frames
def _frame(ext: bytes, first_nh: int, vlan: bool = False) -> bytes:
    udp = struct.pack("!HHHH", 4000, 5004, 8 + 4, 0) + b"abcd"
    body = ext + udp
    ip = (struct.pack("!IHBB", 6 << 28, len(body), first_nh, 64)
          + bytes.fromhex("20010db8000100000000000000000010") + bytes.fromhex("20010db8f00000000000000000000001")
          + body)
    eth = bytes.fromhex("020000000001020000010005")
    if vlan:
        return eth + b"\x81\x00\x00\x07\x86\xdd" + ip
    return eth + b"\x86\xdd" + ip


def _ext(nh: int, options: bytes) -> bytes:
    assert (2 + len(options)) % 8 == 0
    return bytes([nh, (2 + len(options)) // 8 - 1]) + options


def _opt(t=C.DEFAULT_OPTION_TYPE, service=3, pref=2, length=3) -> bytes:
    data = struct.pack("!BH", service, pref)
    return bytes([t, length]) + (data + bytes(8))[:length]


def test_edge_frames_agree_with_the_engine(tmp_path):
    frames = {
        "plain": _frame(_ext(17, _opt() + b"\x00"), 0),
        "vlan": _frame(_ext(17, _opt(service=2, pref=1) + b"\x00"), 0, vlan=True),
        "after PadN and another option": _frame(_ext(17, b"\x01\x00" + bytes([0x1E, 1, 0]) + _opt(service=1)
                                                     + b"\x01\x02\x00\x00"), 0),
        "second one ignored": _frame(_ext(17, _opt(service=0, pref=3) + _opt(service=3, pref=0)
                                          + b"\x01\x02\x00\x00"), 0),
        "reserved service, user preference": _frame(_ext(17, _opt(service=200, pref=40000) + b"\x00"), 0),
        "wrong length (engine drops)": _frame(_ext(17, _opt(length=4)), 0),
        "in destination options (not read)": _frame(_ext(17, _opt() + b"\x00"), 60),
        "hop-by-hop not first (engine drops)": _frame(_ext(0, b"\x01\x04" + bytes(4)) + _ext(17, _opt() + b"\x00"),
                                                      60),
        "other option type": _frame(_ext(17, _opt(t=0x3D) + b"\x00"), 0),
        "untagged": _frame(b"", 17),
    }
    p = tmp_path / "edge.pcap"
    with open(p, "wb") as f:
        w = dpkt.pcap.Writer(f, snaplen=65535)
        for i, fr in enumerate(frames.values()):
            w.writepkt(fr, ts=1.7e9 + i)
    want = oracle(p)
    names = list(frames)
    # the oracle itself sees these as intended, so both sides are tested on every case
    assert sorted(names[n - 1] for n in want) == sorted(
        ["plain", "vlan", "after PadN and another option", "second one ignored",
         "reserved service, user preference"])
    assert want[names.index("second one ignored") + 1] == (0, 3)
    rows = fields(p, "mmr.service")
    assert decoded(rows) == want
    # a wrong-length option of the type is shown as malformed, not decoded
    bad = fields(p, "mmr.bad_length")
    assert [int(r[0]) for r in bad] == [names.index("wrong length (engine drops)") + 1]
