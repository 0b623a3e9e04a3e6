"""pcap replay: the whole pipeline over a capture, with packet timestamps as the clock.

    pcap file (mapped) --compiled walker, link header -> Ethernet--> (buf, offsets, lengths, ts)
    pcapng file --pcapy-ng--> records --(link header -> Ethernet)-----^
        --> Pipeline.process (parse -> classify -> flowbase -> select)
        --> per-uplink counters / optional per-uplink pcaps / flow records

A classic pcap (nearly every capture) is mapped into memory and its records are walked by
``engine._pcapwalk.PcapWalk`` (pyx/pcapwalk.pyx; reference engine/ref/pcapwalk.py), which
writes each batch's offsets, lengths and times straight into the arrays ``Pipeline.process``
takes, and the frames into its buffer: no Python object per packet.  It follows libpcap's rules for
what a record is (the reference says which); libpcap (pcapy-ng) still opens the file first,
so a file it refuses ends in the same words as before.  A pcapng capture is read by
pcapy-ng, a bytes object per packet, and its batches are made by ``to_ethernet``; a file
that cannot be mapped is read into memory and walked the same way.

Link types: Ethernet (1); Linux cooked captures SLL (113) and SLL2 (276), as ``tcpdump -i
any`` writes them; raw IP (LINKTYPE_RAW 101, which libpcap reports as DLT 12, or 14 on some
systems; and the IPv4-only/IPv6-only 228/229), as a capture on a TUN device holds.  The
compiled stages parse Ethernet frames, so each batch is made of Ethernet frames (by the
walker as it copies each record into the batch; for pcapng by a few numpy operations per
batch):

* SLL: the last 14 bytes of the 16-byte header end in the protocol, which is where an
  Ethernet header has its ethertype: the frame starts 2 bytes into the record;
* SLL2: the protocol (bytes 0-1) is copied over the last two bytes of the address field
  (bytes 18-19) and the frame starts 6 bytes into the record (the --out pcaps get the
  record as read: the walker writes them from the mapped file, which it never changes; the
  pcapng path puts the two bytes back first);
* raw IP: every packet follows its own 14-byte header, whose ethertype is taken from the IP
  version nibble (4, 6; else not IP).

The MAC addresses of such frames are meaningless, and nothing in parse -> select reads them.
The --out pcaps hold the records exactly as read, in the capture's own link type.

Timestamps: pcap's fields are unsigned 32-bit, which libpcap hands over as signed, so they
are taken back modulo 2**32; a microseconds field of 10**6 or more is carried into the
seconds (counted); a time a pcap cannot hold (pcapng seconds past 2**32, or a carry past
it) is written to the --out pcaps at the end of the range (counted).  A nanosecond pcap's
fraction is unsigned too (libpcap made one of 2**31 ns or more negative before scaling it).

Read failures: a missing file, a file that is not a capture, or an unsupported link type
ends in ``UserError`` before anything is read.  A file whose last record runs past its end
(cut short) is replayed up to that record and the summary says so.  A bad record before
the end (an impossible length, a damaged block) is *corrupt*: everything before it is
replayed and summarised (outputs written), then ``CorruptCapture`` (a ``UserError`` naming
the byte; its ``summary`` holds the summary) is raised.
"""
from __future__ import annotations

import csv
import ipaddress
import mmap
import os
import struct
import sys
import time
from itertools import chain

import numpy as np

from engine import constants as C
from engine._pcapwalk import FRAME_ROOM, PcapWalk
from engine.errors import UserError
from engine.pipeline import DROP, Pipeline

DLT_EN10MB = 1
DLT_LINUX_SLL = 113
DLT_LINUX_SLL2 = 276
DLT_RAW = (12, 14, 101)          # LINKTYPE_RAW: libpcap reports it as DLT_RAW (12; 14 on OpenBSD)
DLT_IPV4 = 228
DLT_IPV6 = 229
LINK_NAMES = {DLT_EN10MB: "Ethernet", DLT_LINUX_SLL: "Linux cooked (SLL)",
              DLT_LINUX_SLL2: "Linux cooked v2 (SLL2)", 12: "raw IP", 14: "raw IP", 101: "raw IP",
              DLT_IPV4: "raw IPv4", DLT_IPV6: "raw IPv6"}
# the LINKTYPE_ value written in the header of the --out pcaps, by the DLT libpcap reports
OUT_LINKTYPE = {DLT_EN10MB: 1, DLT_LINUX_SLL: 113, DLT_LINUX_SLL2: 276, 12: 101, 14: 101, 101: 101,
                DLT_IPV4: 228, DLT_IPV6: 229}

# magic -> (byte order, record header size): microsecond, nanosecond, and Kuznetzov's
# modified format (libpcap reads all of them)
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 16), b"\xa1\xb2\xc3\xd4": (">", 16),   # microsecond
    b"\x4d\x3c\xb2\xa1": ("<", 16), b"\xa1\xb2\x3c\x4d": (">", 16),   # nanosecond
    b"\x34\xcd\xb2\xa1": ("<", 24), b"\xa1\xb2\xcd\x34": (">", 24),   # modified (Kuznetzov)
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
MAX_CAPLEN = 262144              # libpcap's largest snapshot: a longer record is corrupt
MAX_BLOCK = 16 * 1024 * 1024     # libpcap's largest pcapng block
OUT_SNAPLEN = 65535              # --out pcaps; raised to MAX_CAPLEN when a longer record is written
U32_MAX = 0xFFFFFFFF


class CorruptCapture(UserError):
    """A bad record before the end of the file; ``summary`` is what was read before it."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


def _open(path: str):
    """(pcapy reader, "pcap" or "pcapng") of a capture of a link type mmr replays."""
    import pcapy

    if path == "-":
        raise UserError("-: mmr replay reads a capture from a file, not from standard input; "
                        "save the capture to a file and give its path")
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file; give the path of a pcap or pcapng capture")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory; give the path of a pcap or pcapng capture")
    if not os.path.isfile(path):
        raise UserError(f"{path}: not a regular file (a pipe or a device); mmr replay reads a "
                        "capture file, which it may read twice to locate a damaged record, so "
                        "save the capture to a file and give its path")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror}); "
                        "give the path of a readable pcap or pcapng capture") from None
    try:
        reader = pcapy.open_offline(path)
    except pcapy.PcapError as exc:
        raise UserError(
            f"{path}: not a readable pcap or pcapng capture ({exc}); "
            "give a capture written by tcpdump, Wireshark or 'mmr synth'"
        ) from None
    dlt = reader.datalink()
    if dlt not in LINK_NAMES:
        raise UserError(
            f"{path}: link type {dlt} is not one mmr replays; give a capture of Ethernet (1), "
            "Linux cooked SLL/SLL2 (113/276, 'tcpdump -i any') or raw IP (101, a TUN device)"
        )
    return reader, ("pcap" if magic in PCAP_MAGICS else "pcapng")


def complete_size(path: str) -> tuple[int, int]:
    """(bytes the complete records occupy, file size): they differ when the file is cut."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    fmt = "pcap" if magic in PCAP_MAGICS else "pcapng" if magic == PCAPNG_MAGIC else None
    if fmt is None:
        return size, size
    kind, pos = locate_failure(path, fmt, 1 << 62)
    return (pos, size) if kind == "cut" else (size, size)


def locate_failure(path: str, fmt: str, packets_read: int) -> tuple[str, int]:
    """Where libpcap stopped after ``packets_read`` packets, from the file's own structure:
    ("cut", offset) when the record or block there runs past the end of the file with a
    length libpcap accepts (the file was cut short), else ("corrupt", offset)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if fmt == "pcap":
            e, rec = PCAP_MAGICS[f.read(4)]
            pos, seen = 24, 0
            while True:
                f.seek(pos)
                hdr = f.read(rec)
                if len(hdr) < rec:
                    return ("cut" if hdr else "corrupt"), pos
                caplen = struct.unpack(e + "I", hdr[8:12])[0]
                if caplen > MAX_CAPLEN:
                    return "corrupt", pos
                if pos + rec + caplen > size:
                    return "cut", pos
                if seen >= packets_read:
                    return "corrupt", pos     # well formed, yet libpcap refused it
                pos += rec + caplen
                seen += 1
        pos, seen, e = 0, 0, "<"
        while True:
            f.seek(pos)
            head = f.read(12)
            if len(head) < 12:
                return ("cut" if head else "corrupt"), pos
            if head[:4] == PCAPNG_MAGIC:
                bom = head[8:12]
                if bom not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                    return "corrupt", pos
                e = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
            btype, blen = struct.unpack(e + "II", head[:8])
            if blen < 12 or blen > MAX_BLOCK:
                return "corrupt", pos
            if pos + blen > size:
                return "cut", pos
            if btype in (2, 3, 6):            # packet blocks: obsolete, simple, enhanced
                if seen >= packets_read:
                    return "corrupt", pos
                seen += 1
            pos += blen


def to_ethernet(datas: list, dlt: int):
    """One batch of records as Ethernet frames, in place (see the module text).

    Returns (buf, frame offsets int64, frame lengths uint32, record offsets, record lengths,
    restore): ``restore()`` puts back the record bytes the conversion changed (SLL2)."""
    n = len(datas)
    rec_len = np.fromiter(map(len, datas), dtype=np.int64, count=n)
    if dlt in DLT_RAW or dlt in (DLT_IPV4, DLT_IPV6):
        buf = np.frombuffer(bytearray(14).join([b""] + datas), dtype=np.uint8)
        frame_len = rec_len + 14
        frame_off = np.zeros(n, dtype=np.int64)
        np.cumsum(frame_len[:-1], out=frame_off[1:])
        rec_off = frame_off + 14
        if dlt == DLT_IPV4:
            version = np.full(n, 4, dtype=np.uint8)
        elif dlt == DLT_IPV6:
            version = np.full(n, 6, dtype=np.uint8)
        else:
            version = np.zeros(n, dtype=np.uint8)
            some = rec_len > 0
            version[some] = buf[rec_off[some]] >> 4
        buf[frame_off + 12] = np.where(version == 4, 0x08, np.where(version == 6, 0x86, 0))
        buf[frame_off + 13] = np.where(version == 6, 0xDD, 0)
        return buf, frame_off, frame_len.astype(np.uint32), rec_off, rec_len, None
    rec_off = np.zeros(n, dtype=np.int64)
    np.cumsum(rec_len[:-1], out=rec_off[1:])
    if dlt == DLT_LINUX_SLL:
        buf = np.frombuffer(b"".join(datas), dtype=np.uint8)
        shift = np.minimum(rec_len, 2)
        return buf, rec_off + shift, (rec_len - shift).astype(np.uint32), rec_off, rec_len, None
    if dlt == DLT_LINUX_SLL2:
        buf = np.frombuffer(bytearray().join(datas), dtype=np.uint8)
        shift = np.minimum(rec_len, 6)
        whole = rec_off[rec_len >= 20]
        saved = (buf[whole + 18], buf[whole + 19])          # copies (fancy indexing)
        buf[whole + 18] = buf[whole]
        buf[whole + 19] = buf[whole + 1]

        def restore():
            buf[whole + 18], buf[whole + 19] = saved
        return buf, rec_off + shift, (rec_len - shift).astype(np.uint32), rec_off, rec_len, restore
    buf = np.frombuffer(b"".join(datas), dtype=np.uint8)
    return buf, rec_off, rec_len.astype(np.uint32), rec_off, rec_len, None


class Progress:
    """A progress line on stderr: redrawn in place on a terminal (5 times a second at most),
    a line every 5 seconds otherwise (--progress into a file or a pipe)."""

    def __init__(self, total: int, name: str, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.every = 0.2 if self.tty else 5.0
        self.total, self.name = max(total, 1), name
        self.done = self.packets = 0
        self.t0 = self.last = time.monotonic()

    def line(self) -> str:
        pct = min(100.0, 100.0 * self.done / self.total)
        rate = self.packets / max(time.monotonic() - self.t0, 1e-9)
        return (f"{self.name}: {pct:3.0f}%  {self.done / 1e6:,.1f} of {self.total / 1e6:,.1f} MB  "
                f"{self.packets:,} packets  {rate:,.0f} packets/s")

    def _emit(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):      # stderr gone: the replay goes on without it
            self.every = float("inf")

    def update(self, nbytes: int, packets: int) -> None:
        self.done += nbytes
        self.packets += packets
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._emit(("\r\x1b[K" if self.tty else "") + self.line() + ("" if self.tty else "\n"))

    def close(self) -> None:
        if self.every == float("inf"):
            return
        self._emit("\r\x1b[K" if self.tty else self.line() + "\n")


class _PcapOut:
    """One --out pcap: microsecond pcap of the capture's link type, the records as read."""

    def __init__(self, path: str, linktype: int):
        self.path = path
        self.linktype = linktype
        self.snaplen = OUT_SNAPLEN
        try:
            self.f = open(path, "wb")
        except OSError as exc:
            raise UserError(f"--out: cannot write {path} ({exc.strerror}); "
                            "give a writable directory") from None
        self.f.write(self._header())

    def _header(self) -> bytes:
        return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, self.snaplen, self.linktype)

    def close(self) -> None:
        if self.snaplen != OUT_SNAPLEN:       # a record longer than 65535 bytes was written
            self.f.seek(0)
            self.f.write(self._header())
        self.f.close()


class Replay:
    """Replays one capture through a Pipeline; ``run()`` returns the summary dict (and raises
    ``CorruptCapture``, which carries it, when a bad record stops the reading early)."""

    def __init__(self, path, cfg, batch=256, out_dir=None, flows_csv=None, progress=None):
        if batch < 1:
            raise UserError(f"--batch {batch}: must be at least 1; try 256")
        if out_dir == "-":
            raise UserError("--out -: --out names a directory for one pcap per uplink, which "
                            "standard output cannot hold; give a directory")
        self.path = path
        self.cfg = cfg
        self.batch = batch
        self.out_dir = out_dir
        self.flows_csv = flows_csv
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.pipeline = Pipeline(cfg, batch=batch)
        self.truncated = None
        self.corrupt = None
        self.read_error = None
        self.read_stop = None          # (kind, byte) where the walker stopped early
        self.mapped = None             # the pcap's bytes while the walker reads them
        self.packets_read = 0
        self.fmt = "pcap"
        self.dlt = DLT_EN10MB
        self.usec_carried = 0
        self.out_of_range = 0

    # -- reading ---------------------------------------------------------------------
    def batches(self, reader):
        """pcapng (pcapy-ng): yield (buf, offsets, lengths, ts, batch) per batch; ``batch``
        holds what the outputs need (the buffer the records are in, record offsets and
        lengths, wire lengths, pcap times, restore)."""
        from pcapy import PcapError

        batch = self.batch
        nxt = reader.next
        dlt = self.dlt
        want_wire = self.out_dir is not None
        while True:
            datas = []
            tss = []
            wire = []
            for _ in range(batch):
                try:
                    hdr, data = nxt()
                except PcapError as exc:      # a record cut short or corrupt: located later
                    self.read_error = str(exc)
                    hdr = None
                if hdr is None:
                    break
                datas.append(data)
                tss.append(hdr.getts())
                if want_wire:
                    wire.append(hdr.getlen())
            if not datas:
                return
            self.packets_read += len(datas)
            buf, offsets, lengths, rec_off, rec_len, restore = to_ethernet(datas, dlt)
            ts, sec, usec = self._clock(tss)
            yield buf, offsets, lengths, ts, (buf, rec_off, rec_len, wire, sec, usec, restore)
            if len(datas) < batch:
                return

    def walk(self, walker):
        """pcap (the compiled walker over the mapped file): the batches of ``batches``.
        The buffer and arrays are reused from one batch to the next; the records for the
        outputs are in the mapped file itself.  (Leaving Ethernet frames in the mapped file
        instead of copying them was measured: no faster, as the time goes in the page
        faults that map the file, which the copy takes on the way.)"""
        batch = self.batch
        src = self.mapped
        buf = np.empty(max(FRAME_ROOM, 2048 * batch), dtype=np.uint8)
        frame_off = np.empty(batch, np.int64)
        frame_len = np.empty(batch, np.uint32)
        rec_off = np.empty(batch, np.int64)
        rec_len = np.empty(batch, np.int64)
        wire = np.empty(batch, np.uint32)
        sec = np.empty(batch, np.int64)
        usec = np.empty(batch, np.int64)
        ts = np.empty(batch, np.float64)
        nxt = walker.next_batch
        while True:
            n = nxt(buf, frame_off, frame_len, rec_off, rec_len, wire, sec, usec, ts)
            if n == 0:
                break
            self.packets_read += n
            if n == batch:
                yield buf, frame_off, frame_len, ts, (src, rec_off, rec_len, wire, sec, usec, None)
            else:
                yield buf, frame_off[:n], frame_len[:n], ts[:n], (
                    src, rec_off[:n], rec_len[:n], wire[:n], sec[:n], usec[:n], None)
        self.usec_carried += walker.usec_carried
        self.out_of_range += walker.out_of_range
        if walker.kind is not None:
            self.read_error = walker.error
            self.read_stop = (walker.kind, walker.at)

    def _clock(self, tss):
        """(float seconds for the pipeline, pcap seconds, pcap microseconds) of a batch."""
        t = np.fromiter(chain.from_iterable(tss), dtype=np.int64, count=2 * len(tss)).reshape(-1, 2)
        sec, usec = t[:, 0], t[:, 1]
        if t.min() < 0 and self.fmt == "pcap":   # u32 on disk, signed 32-bit from libpcap
            sec[sec < 0] += 1 << 32
            usec[usec < 0] += 1 << 32
        if usec.max() >= 1_000_000:      # a microseconds field of a second or more: carry it
            over = usec >= 1_000_000
            self.usec_carried += int(over.sum())
            sec[over] += usec[over] // 1_000_000
            usec[over] %= 1_000_000
        ts = sec + usec * 1e-6
        if sec.max() > U32_MAX or sec.min() < 0:   # pcapng can say it, a pcap cannot: clamp
            low, high = sec < 0, sec > U32_MAX
            self.out_of_range += int(low.sum() + high.sum())
            sec[low], usec[low] = 0, 0
            sec[high], usec[high] = U32_MAX, 999_999
        return ts, sec, usec

    # -- outputs ---------------------------------------------------------------------
    def _open_outputs(self):
        if self.out_dir is None:
            return None
        try:
            os.makedirs(self.out_dir, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--out {self.out_dir}: cannot create it ({exc.strerror}); "
                            "give a writable directory") from None
        names = [u.name for u in self.cfg.uplinks] + ["dropped"]
        files = []
        try:
            for name in names:
                files.append(_PcapOut(os.path.join(self.out_dir, f"{name}.pcap"),
                                      OUT_LINKTYPE[self.dlt]))
        except UserError:
            for w in files:
                w.close()
            raise
        return files

    def _write_outputs(self, files, out, rec):
        src, rec_off, rec_len, wire, sec, usec, restore = rec
        if restore is not None:
            restore()
        n = len(out)
        hdr = np.empty((n, 4), dtype="<u4")
        hdr[:, 0], hdr[:, 1], hdr[:, 2], hdr[:, 3] = sec, usec, rec_len, wire
        hb = hdr.tobytes()
        mv = memoryview(src)
        dropped = len(files) - 1
        if n and int(rec_len.max()) > OUT_SNAPLEN:    # rare: only the files that get one
            dest = np.where(out >= 0, out, np.where(out == DROP, dropped, -1))
            for k, w in enumerate(files):
                if (rec_len[dest == k] > OUT_SNAPLEN).any():
                    w.snaplen = MAX_CAPLEN
        parts = [[] for _ in files]
        p = None
        try:
            for i, o, a, ln in zip(range(n), out.tolist(), rec_off.tolist(), rec_len.tolist()):
                if o >= 0:
                    p = parts[o]
                elif o == DROP:
                    p = parts[dropped]
                else:
                    continue  # KERNEL: the host's, not an uplink's
                p.append(hb[16 * i:16 * i + 16])
                p.append(mv[a:a + ln])
            for w, p in zip(files, parts):
                if p:
                    w.f.write(b"".join(p))
        finally:   # src may be the mapped file, closed after the replay: no view may outlive this
            parts = p = None
            mv.release()

    def _open_flows(self):
        """The --flows file, opened before the replay so a bad path costs nothing."""
        if self.flows_csv is None:
            return None
        if self.flows_csv == "-":
            return sys.stdout
        try:
            return open(self.flows_csv, "w", newline="")
        except OSError as exc:
            raise UserError(f"--flows {self.flows_csv}: cannot write it ({exc.strerror}); "
                            "give a writable path, or - for standard output") from None

    # -- the run ---------------------------------------------------------------------
    def _map(self):
        """(walker, mapping) over the pcap at self.path: the file mapped read-only, or read
        into memory if it cannot be mapped (mapping None then)."""
        try:
            with open(self.path, "rb") as f:
                try:
                    mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                except (OSError, ValueError):      # a file system that cannot map it
                    mapping = None
                    self.mapped = f.read()
        except OSError as exc:
            raise UserError(f"{self.path}: cannot read it ({exc.strerror}); "
                            "give the path of a readable pcap or pcapng capture") from None
        try:
            if mapping is not None:
                self.mapped = mapping
            walker = PcapWalk(self.mapped, self.dlt)
        except ValueError:     # libpcap took it as a pcap, then it changed under us
            if mapping is not None:
                mapping.close()
            raise UserError(f"{self.path}: changed while it was being opened; "
                            "give a capture that is not being written") from None
        return walker, mapping

    def run(self) -> dict:
        reader, self.fmt = _open(self.path)
        self.dlt = reader.datalink()
        walker = mapping = None
        if self.fmt == "pcap":
            reader.close()
            walker, mapping = self._map()
        pipe = self.pipeline
        try:
            flows_file = self._open_flows()
            try:
                writers = self._open_outputs()
            except UserError:
                if flows_file not in (None, sys.stdout):
                    flows_file.close()
                raise
        except UserError:
            self._unmap(walker, mapping)
            raise
        if flows_file is not None:
            pipe.flows.set_export(True)
        size = os.path.getsize(self.path)
        bar = Progress(size, os.path.basename(self.path)) if self.progress else None
        t0 = time.perf_counter()
        try:
            source = self.walk(walker) if walker is not None else self.batches(reader)
            for buf, offsets, lengths, ts, rec in source:
                out = pipe.process(buf, offsets, lengths, ts)
                if writers is not None:
                    self._write_outputs(writers, out, rec)
                pipe.maybe_expire(float(ts[-1]))
                if bar is not None:
                    bar.update(int(rec[2].sum()) + 16 * len(ts), len(ts))
        finally:
            source = rec = None
            self._unmap(walker, mapping)
            if bar is not None:
                bar.close()
            if writers is not None:
                for w in writers:
                    w.close()
        elapsed = time.perf_counter() - t0
        if self.read_error:   # stopped early: cut short at the end, or corrupt
            if self.read_stop is not None:          # the walker knows where and why
                kind, at = self.read_stop
            else:                                   # libpcap (pcapng): locate it in the file
                kind, at = locate_failure(self.path, self.fmt, self.packets_read)
            if kind == "cut":
                self.truncated = (at, size)
            else:
                self.corrupt = {"at_byte": at, "file_bytes": size, "error": self.read_error}
        summary = self.summarize(elapsed)
        if flows_file is not None:
            self.write_flows(flows_file)
        if self.corrupt:
            n = self.packets_read
            raise CorruptCapture(
                f"{self.path} is corrupt at byte {self.corrupt['at_byte']} of {size}: "
                f"{self.read_error}; the {n} packet{'s' if n != 1 else ''} before it "
                "were replayed (see the summary), nothing after it was read", summary)
        return summary

    def _unmap(self, walker, mapping):
        self.mapped = None
        if walker is not None:
            walker.release()
        if mapping is not None:
            mapping.close()

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
            "link_type": self.dlt,
        }
        if self.truncated:
            out["truncated"] = {"complete_bytes": self.truncated[0], "file_bytes": self.truncated[1]}
        if self.corrupt:
            out["corrupt"] = dict(self.corrupt)
        if self.usec_carried or self.out_of_range:
            out["timestamps"] = {"usec_carried": self.usec_carried, "out_of_range": self.out_of_range}
        return out

    def write_flows(self, f) -> int:
        """One row per flow seen (expired, evicted and still active) to the open file f
        (or to the path f), which is closed after unless it is standard output."""
        if isinstance(f, str):
            self.flows_csv = f
            f = self._open_flows()
        flows = self.pipeline.flows
        parts = [flows.drain_export(), flows.dump()]
        recs = np.concatenate(parts) if len(parts[0]) else parts[1]
        names = [u.name for u in self.cfg.uplinks]
        try:
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
            f.flush()
        finally:
            if f is not sys.stdout:
                f.close()
        return len(recs)


def address_text(a) -> str:
    """16 address bytes in normal text form; IPv4-mapped addresses as dotted quads."""
    ip = ipaddress.IPv6Address(bytes(a))
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


def format_summary(s: dict, path: str) -> str:
    lines = [f"replay {path}: {s['packets']} packets, {s['bytes']} bytes, "
             f"{s['flows']} flows in {s['elapsed_s']:.3f} s ({s['pps']:,.0f} packets/s)"]
    if s.get("link_type", DLT_EN10MB) != DLT_EN10MB:
        lines.append(f"  link    {LINK_NAMES[s['link_type']]} (link type {s['link_type']}), "
                     "replayed as Ethernet frames")
    if s.get("truncated"):
        t = s["truncated"]
        lines.append(f"  warning: the file is cut short: the last record is incomplete "
                     f"(complete records end at byte {t['complete_bytes']} of {t['file_bytes']}); "
                     "everything before it was replayed")
    if s.get("corrupt"):
        c = s["corrupt"]
        lines.append(f"  error:  the file is corrupt at byte {c['at_byte']} of {c['file_bytes']} "
                     f"({c['error']}); only the records before it were replayed")
    if s.get("timestamps"):
        t = s["timestamps"]
        if t["usec_carried"]:
            lines.append(f"  warning: {t['usec_carried']} records have a microseconds field of "
                         "1000000 or more; the whole seconds in it were carried into the seconds")
        if t["out_of_range"]:
            lines.append(f"  warning: {t['out_of_range']} records are timed outside what a pcap "
                         "can hold (1970 to 2106); --out pcaps carry them at the nearest end")
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
