"""pcap replay: the whole pipeline over a capture, with packet timestamps as the clock.

    pcap/pcapng file --pcapy-ng--> batches (buf, offsets, lengths, ts)
        --> Pipeline.process (parse -> classify -> flowbase -> select)
        --> per-uplink counters / optional per-uplink pcaps / flow records

Takes a capture of Ethernet frames (libpcap link type 1).  A file that is missing, not a
capture, or of another link type ends in ``UserError``; a file whose last record is cut
short still reports everything it read and says where it stopped.
"""
from __future__ import annotations

import csv
import ipaddress
import os
import struct
import sys
import time

import numpy as np

from engine import constants as C
from engine.errors import UserError
from engine.pipeline import DROP, Pipeline

DLT_EN10MB = 1
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",   # microsecond
    b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">",   # nanosecond
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


def _open(path: str):
    import pcapy

    if not os.path.exists(path):
        raise UserError(f"{path}: no such file; give the path of a pcap or pcapng capture")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory; give the path of a pcap or pcapng capture")
    try:
        reader = pcapy.open_offline(path)
    except pcapy.PcapError as exc:
        raise UserError(
            f"{path}: not a readable pcap or pcapng capture ({exc}); "
            "give a capture written by tcpdump, Wireshark or 'mmr synth'"
        ) from None
    if reader.datalink() != DLT_EN10MB:
        raise UserError(
            f"{path}: link type {reader.datalink()} is not Ethernet (1); "
            "mmr replays Ethernet captures only (capture on an Ethernet device, not 'any')"
        )
    return reader


def complete_size(path: str) -> tuple[int, int]:
    """(bytes the complete records occupy, file size): they differ when the file is cut."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic in PCAP_MAGICS:
            e = PCAP_MAGICS[magic]
            f.seek(24)
            pos = 24
            while True:
                hdr = f.read(16)
                if len(hdr) < 16:
                    return pos, size
                incl = struct.unpack(e + "IIII", hdr)[2]
                if pos + 16 + incl > size:
                    return pos, size
                pos += 16 + incl
                f.seek(pos)
        if magic == PCAPNG_MAGIC:
            pos = 0
            endian = "<"
            while True:
                f.seek(pos)
                hdr = f.read(12)
                if len(hdr) < 8:
                    return pos, size
                if hdr[:4] == PCAPNG_MAGIC and len(hdr) >= 12:
                    endian = "<" if hdr[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
                blen = struct.unpack(endian + "I", hdr[4:8])[0]
                if blen < 12 or pos + blen > size:
                    return pos, size
                pos += blen
    return size, size


class Replay:
    """Replays one capture through a Pipeline; ``run()`` returns the summary dict."""

    def __init__(self, path, cfg, batch=256, out_dir=None, flows_csv=None, progress=None):
        if batch < 1:
            raise UserError(f"--batch {batch}: must be at least 1; try 256")
        self.path = path
        self.cfg = cfg
        self.batch = batch
        self.out_dir = out_dir
        self.flows_csv = flows_csv
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.pipeline = Pipeline(cfg, batch=batch)
        self.truncated = None
        self.read_error = None

    # -- reading ---------------------------------------------------------------------
    def batches(self, reader):
        """Yield (buf, offsets, lengths, ts, wire_bytes) batches; no per-packet arrays."""
        batch = self.batch
        nxt = reader.next
        while True:
            datas = []
            tss = []
            wire = 0
            for _ in range(batch):
                try:
                    hdr, data = nxt()
                except Exception as exc:  # pcapy.PcapError: a record cut short
                    self.read_error = str(exc)
                    hdr = None
                if hdr is None:
                    break
                datas.append(data)
                sec, usec = hdr.getts()
                tss.append(sec + usec * 1e-6)
            if not datas:
                return
            lengths = np.fromiter(map(len, datas), dtype=np.uint32, count=len(datas))
            offsets = np.zeros(len(datas), dtype=np.int64)
            np.cumsum(lengths[:-1], out=offsets[1:])
            buf = np.frombuffer(b"".join(datas), dtype=np.uint8)
            wire = int(lengths.sum()) + 16 * len(datas)
            yield buf, offsets, lengths, np.array(tss, dtype=np.float64), wire
            if len(datas) < batch:
                return

    # -- outputs ---------------------------------------------------------------------
    def _open_outputs(self):
        import dpkt

        if self.out_dir is None:
            return None
        try:
            os.makedirs(self.out_dir, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--out {self.out_dir}: cannot create it ({exc.strerror}); "
                            "give a writable directory") from None
        names = [u.name for u in self.cfg.uplinks] + ["dropped"]
        files = []
        for name in names:
            p = os.path.join(self.out_dir, f"{name}.pcap")
            try:
                f = open(p, "wb")
            except OSError as exc:
                raise UserError(f"--out: cannot write {p} ({exc.strerror}); "
                                "give a writable directory") from None
            files.append((f, dpkt.pcap.Writer(f)))
        return files

    def _write_outputs(self, writers, buf, offsets, lengths, ts, out):
        dropped = len(writers) - 1
        mv = memoryview(buf)
        for i in range(len(out)):
            o = int(out[i])
            if o >= 0:
                w = writers[o][1]
            elif o == DROP:
                w = writers[dropped][1]
            else:
                continue  # KERNEL: the host's, not an uplink's
            off = int(offsets[i])
            w.writepkt(mv[off:off + int(lengths[i])].tobytes(), ts=float(ts[i]))

    # -- the run ---------------------------------------------------------------------
    def run(self) -> dict:
        reader = _open(self.path)
        pipe = self.pipeline
        writers = self._open_outputs()
        if self.flows_csv is not None:
            pipe.flows.set_export(True)
        size = os.path.getsize(self.path)
        bar = None
        if self.progress:
            try:
                from tqdm import tqdm

                bar = tqdm(total=size, unit="B", unit_scale=True, desc=os.path.basename(self.path),
                           file=sys.stderr, leave=False)
            except ImportError:  # pragma: no cover - tqdm is a dependency
                bar = None
        t0 = time.perf_counter()
        try:
            for buf, offsets, lengths, ts, wire in self.batches(reader):
                out = pipe.process(buf, offsets, lengths, ts)
                if writers is not None:
                    self._write_outputs(writers, buf, offsets, lengths, ts, out)
                pipe.maybe_expire(float(ts[-1]))
                if bar is not None:
                    bar.update(wire)
        finally:
            if bar is not None:
                bar.close()
            if writers is not None:
                for f, _ in writers:
                    f.close()
        elapsed = time.perf_counter() - t0
        if self.read_error:   # libpcap reports a record cut short; say where the file ends
            self.truncated = complete_size(self.path)
        summary = self.summarize(elapsed)
        if self.flows_csv is not None:
            self.write_flows(self.flows_csv)
        return summary

    def summarize(self, elapsed: float) -> dict:
        s = self.pipeline.summary()
        out = {
            "packets": s["packets"],
            "bytes": s["bytes"],
            "flows": s["flows"]["created"],
            "uplinks": s["uplinks"],
            "classes": s["classes"],
            "drops": s["drops"],
            "elapsed_s": round(elapsed, 6),
            "pps": round(s["packets"] / elapsed, 1) if elapsed > 0 else 0.0,
            "flow_events": s["flows"],
            "kernel": s["kernel"],
            "notes": s["notes"],
        }
        if self.truncated:
            out["truncated"] = {"complete_bytes": self.truncated[0], "file_bytes": self.truncated[1]}
        return out

    def write_flows(self, path: str) -> int:
        """One row per flow seen (expired, evicted and still active)."""
        flows = self.pipeline.flows
        parts = [flows.drain_export(), flows.dump()]
        recs = np.concatenate(parts) if len(parts[0]) else parts[1]
        names = [u.name for u in self.cfg.uplinks]
        try:
            f = open(path, "w", newline="")
        except OSError as exc:
            raise UserError(f"--flows {path}: cannot write it ({exc.strerror}); "
                            "give a writable path") from None
        with f:
            w = csv.writer(f)
            w.writerow(["src", "dst", "proto", "sport", "dport", "service", "preference",
                        "uplink", "packets", "bytes"])
            for r in recs:
                w.writerow([
                    address_text(r["src"]), address_text(r["dst"]), int(r["proto"]),
                    int(r["sport"]), int(r["dport"]),
                    C.SERVICE_NAMES[min(int(r["service"]), 3)], int(r["preference"]),
                    names[int(r["uplink"])] if int(r["uplink"]) < len(names) else "",
                    int(r["packets"]), int(r["bytes"]),
                ])
        return len(recs)


def address_text(a) -> str:
    """16 address bytes in normal text form; IPv4-mapped addresses as dotted quads."""
    ip = ipaddress.IPv6Address(bytes(a))
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


def format_summary(s: dict, path: str) -> str:
    lines = [f"replay {path}: {s['packets']} packets, {s['bytes']} bytes, "
             f"{s['flows']} flows in {s['elapsed_s']:.3f} s ({s['pps']:,.0f} packets/s)"]
    if s.get("truncated"):
        t = s["truncated"]
        lines.append(f"  warning: the file is cut short: the last record is incomplete "
                     f"(complete records end at byte {t['complete_bytes']} of {t['file_bytes']}); "
                     "everything before it was replayed")
    lines.append("  uplink            packets          bytes    flows")
    for name, u in s["uplinks"].items():
        lines.append(f"  {name:<12} {u['packets']:>12} {u['bytes']:>14} {u['flows']:>8}")
    lines.append("  class   " + "  ".join(f"{k}={v}" for k, v in s["classes"].items()))
    fe = s["flow_events"]
    lines.append(f"  flows   created={fe['created']} expired={fe['expired']} "
                 f"evicted={fe['evicted']} active={fe['active']}")
    drops = s["drops"]
    lines.append("  drops   " + ("  ".join(f"{k}={v}" for k, v in drops.items()) if drops else "none"))
    if s.get("notes"):
        lines.append("  notes   " + "  ".join(f"{k}={v}" for k, v in s["notes"].items()))
    lines.append(f"  kernel  {s['kernel']} (not IP: left to the host)")
    return "\n".join(lines)
