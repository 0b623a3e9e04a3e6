"""Coverage-guided fuzzing (atheris) of the compiled NAPT44 (pyx/nat.pyx) against its
instrumented reference (engine/ref/nat.py).

    python3 tests/fuzz/fuzz_nat.py -max_total_time=60 -print_final_stats=1

Each input is a short session on a fresh pair of translators whose first packets opened a
few mappings (TCP, UDP, UDP without checksum, ICMP echo): up to eight packets, each one of
the templates below (the outbound packets, the replies, ICMP errors quoting either, later
fragments) with bytes the fuzzer overwrites, sent out or in on uplink 0, 1 or 2 (absent),
with or without a pending checksum, now and then after time has passed.  The two must agree
on the code and on every byte of every packet, and on the table sizes; a mismatch or a crash
stops the run with the input saved (crash-*)."""
import os
import sys

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, ".."))

with atheris.instrument_imports(include=["engine.ref"]):
    from engine.ref.nat import Nat44Ref

from engine import _nat  # noqa: E402
from test_nat import EXT0, EXT1, LAN1, LAN2, REM, ROUTER, echo, error, ipv4, tcp, udp  # noqa: E402

OPEN = [tcp(LAN1, REM, 40000, 443), udp(LAN1, REM, 5000, 53), udp(LAN2, REM, 5000, 53, zero=True),
        echo(LAN2, REM, 77), udp(LAN2, REM, 123, 123)]


def templates(c) -> list[bytes]:
    port = c.mapping(17, LAN2, 5000, REM, 53, 0) or 5001
    t = [tcp(REM, EXT0, 443, 40000, 0x12, b"r" * 20), udp(REM, EXT0, 53, 5000, b"answer"),
         udp(REM, EXT0, 53, port, b"x", zero=True), echo(REM, EXT0, 77, typ=0),
         error(ROUTER, EXT0, tcp(EXT0, REM, 40000, 443, data=b"q" * 12)),
         error(ROUTER, EXT0, udp(EXT0, REM, 5000, 53), keep=28),
         error(LAN1, REM, udp(REM, LAN1, 53, 5000), typ=3, code=3),
         ipv4(REM, EXT0, 17, b"f" * 24, ident=3, frag=0x2000), ipv4(REM, EXT0, 17, b"g" * 16, ident=3, frag=4),
         ipv4(LAN1, REM, 6, b"h" * 16, frag=8)]
    return t + OPEN


def check(data: bytes) -> None:
    seed = int.from_bytes(data[:2].ljust(2, b"\0"), "little")
    c, r = _nat.Nat44(2, 16, seed=seed), Nat44Ref(2, 16, seed=seed)
    for nat in (c, r):
        nat.set_address(0, EXT0)
        nat.set_address(1, EXT1)
    now = 1.0
    for p in OPEN:
        a, b = bytearray(p), bytearray(p)
        assert c.out_packet(a, 0, now) == r.out_packet(b, 0, now) and a == b
    tpl = templates(c)
    fdp = atheris.FuzzedDataProvider(data[2:])
    for _ in range(fdp.ConsumeIntInRange(1, 8)):
        ctrl = fdp.ConsumeInt(2)
        pkt = bytearray(tpl[ctrl % len(tpl)])
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            at = fdp.ConsumeIntInRange(0, len(pkt) + 2)
            val = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4))
            pkt[at:at + len(val)] = val
        if fdp.ConsumeBool():
            pkt = pkt[:fdp.ConsumeIntInRange(0, len(pkt))]
        direction = "in" if (ctrl >> 5) & 1 else "out"
        u, pending = (ctrl >> 6) % 3, bool((ctrl >> 8) & 1)
        now += fdp.ConsumeIntInRange(0, 3) * 40.0
        if (ctrl >> 9) & 1:
            assert c.expire(now) == r.expire(now)
        a, b = bytearray(pkt), bytearray(pkt)
        ca = getattr(c, direction + "_packet")(a, u, now, pending)
        cb = getattr(r, direction + "_packet")(b, u, now, pending)
        if ca != cb or a != b:
            raise AssertionError(f"{direction} u={u} pending={pending}: compiled {ca} {bytes(a).hex()}, "
                                 f"reference {cb} {bytes(b).hex()}; packet {bytes(pkt).hex()}")
        if len(c) != len(r):
            raise AssertionError(f"tables differ: {len(c)} vs {len(r)}")


def main():
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
