"""Reference capture walker: the records of a classic pcap held in memory (an mmap of the
file), turned into the batch ``Pipeline.process`` takes, one record at a time in Python.

The oracle of the compiled walker (pyx/pcapwalk.pyx, ``engine._pcapwalk.PcapWalk``), which
``mmr replay`` uses: both have this interface and must give the same batches, counts and
stop (kind, byte, message) on any bytes.  What a record is follows libpcap 1.10
(sf-pcap.c), which replay used before and which the tests hold as a second oracle:

* file header: 24 bytes; the magic gives the byte order, micro- or nanoseconds and the
  record header size (16; 24 in Kuznetzov's modified format); the snapshot length is the
  header's, or 262144 when it says 0 or more than 2**31 - 1, and 14 more in a modified-format
  Ethernet capture (libpcap's guess that it was taken in raw mode; kept as a 32-bit value);
* versions before 2.3 wrote caplen and len swapped (swapped back); 2.3 sometimes did
  (swapped back when caplen > len);
* a record whose caplen is over 262144 is *corrupt* ("invalid packet capture length ...,
  bigger than snaplen of" the snapshot length, printed signed; "... maximum of 262144" when
  the snapshot length is not smaller than that caplen);
* a record (or its header) that runs past the end of the file is *cut*: the file was cut
  short there;
* a record longer than the snapshot length gives its first ``snapshot`` bytes (and the
  walk goes on after the whole record).

Each record goes into the batch as an Ethernet frame (see engine/replay.py): copied as it
is (Ethernet), two bytes in (SLL), six bytes in with the protocol copied over the last two
bytes of the address (SLL2), or after a 14-byte header whose ethertype comes from the IP
version (raw IP).  ``rec_off``/``rec_len`` are the record's bytes in the file, unchanged,
for the --out pcaps.  Times: seconds and the fraction are unsigned 32-bit; nanoseconds are
made microseconds (``// 1000``); microseconds of 10**6 or more are carried into the seconds
(counted in ``usec_carried``); ``ts`` = seconds + microseconds * 1e-6; seconds past 2**32 - 1
(only a carry gets there) are clamped in ``sec``/``usec`` (counted in ``out_of_range``).
"""
from __future__ import annotations

import struct

MAX_CAPLEN = 262144
FRAME_ROOM = MAX_CAPLEN + 14     # the batch buffer must hold at least one frame this long
U32_MAX = 0xFFFFFFFF

# magic (as read little-endian) -> (byte order, nanoseconds, record header size)
MAGICS = {
    0xA1B2C3D4: ("<", False, 16), 0xD4C3B2A1: (">", False, 16),
    0xA1B23C4D: ("<", True, 16), 0x4D3CB2A1: (">", True, 16),
    0xA1B2CD34: ("<", False, 24), 0x34CDB2A1: (">", False, 24),
}
NOT_SWAPPED, SWAPPED, MAYBE_SWAPPED = 0, 1, 2
RAW_DLTS = (12, 14, 101)


class PcapWalk:
    """Walks the records of the classic pcap in ``data`` (any buffer), for link type ``dlt``.

    ``next_batch(buf, frame_off, frame_len, rec_off, rec_len, wire, sec, usec, ts)`` fills up
    to ``len(frame_off)`` records (fewer when ``buf`` is full, or at the end) and returns how
    many; 0 once the walk is over.  Then ``kind`` is None (the end), "cut" or "corrupt",
    ``at`` the byte of the record that stopped it and ``error`` libpcap's words for it."""

    def __init__(self, data, dlt: int):
        self.data = memoryview(data).cast("B")
        self.size = len(self.data)
        if self.size < 24:
            raise ValueError("not a pcap: shorter than its file header")
        magic = struct.unpack("<I", self.data[:4])[0]
        if magic not in MAGICS:
            raise ValueError("not a pcap: unknown magic")
        self.order, self.nsec, self.rec_hdr = MAGICS[magic]
        major, minor, _, _, snaplen, linktype = struct.unpack(self.order + "HHiIII", self.data[4:24])
        if major < 2 or (major == 2 and minor < 3):
            self.swap = SWAPPED
        elif major == 2 and minor == 3:
            self.swap = MAYBE_SWAPPED
        else:
            self.swap = NOT_SWAPPED
        snapshot = MAX_CAPLEN if snaplen == 0 or snaplen > 0x7FFFFFFF else snaplen
        if self.rec_hdr == 24 and linktype & 0x03FFFFFF == 1:
            snapshot = (snapshot + 14) & U32_MAX
        self.snapshot = snapshot
        self.dlt = dlt
        self.pos = 24
        self.packets = 0
        self.usec_carried = 0
        self.out_of_range = 0
        self.done = False
        self.kind = None
        self.at = -1
        self.error = ""

    def release(self):
        """Let go of the buffer (the walk is over after this)."""
        self.data = memoryview(b"")
        self.size = 0
        self.done = True

    def _stop(self, kind, error):
        self.done = True
        self.kind = kind
        self.at = self.pos
        self.error = error

    def next_batch(self, buf, frame_off, frame_len, rec_off, rec_len, wire, sec, usec, ts) -> int:
        n = len(frame_off)
        if min(len(a) for a in (frame_len, rec_off, rec_len, wire, sec, usec, ts)) < n:
            raise ValueError("next_batch: every array must hold as many entries as frame_off")
        if buf is None or len(buf) < FRAME_ROOM:
            raise ValueError(f"next_batch: the buffer must hold at least {FRAME_ROOM} bytes")
        buf = memoryview(buf).cast("B")
        d = self.data
        room = len(buf)
        o = 0
        i = 0
        rh = self.rec_hdr
        while i < n and not self.done:
            pos = self.pos
            left = self.size - pos
            if left == 0:
                self.done = True
                break
            if left < rh:
                self._stop("cut", f"truncated dump file; tried to read {rh} header bytes, "
                                  f"only got {left}")
                break
            s, frac, caplen, length = struct.unpack(self.order + "IIII", d[pos:pos + 16])
            if self.swap == SWAPPED or (self.swap == MAYBE_SWAPPED and caplen > length):
                caplen, length = length, caplen
            if caplen > MAX_CAPLEN:
                if caplen > self.snapshot:
                    signed = (self.snapshot ^ 0x80000000) - 0x80000000
                    limit = f"snaplen of {signed}"
                else:
                    limit = f"maximum of {MAX_CAPLEN}"
                self._stop("corrupt", f"invalid packet capture length {caplen}, bigger than {limit}")
                break
            dlen = min(caplen, self.snapshot)
            avail = left - rh
            if avail < caplen:
                want = dlen if avail < dlen else caplen
                self._stop("cut", f"truncated dump file; tried to read {want} captured bytes, "
                                  f"only got {avail}")
                break
            if o + dlen + 14 > room:
                break                                  # the buffer is full: the next batch
            p = pos + rh
            rec = d[p:p + dlen]
            dlt = self.dlt
            if dlt in RAW_DLTS or dlt in (228, 229):
                if dlt == 228:
                    version = 4
                elif dlt == 229:
                    version = 6
                else:
                    version = rec[0] >> 4 if dlen else 0
                buf[o:o + 14] = b"\0" * 12 + (b"\x08\x00" if version == 4 else
                                              b"\x86\xdd" if version == 6 else b"\0\0")
                buf[o + 14:o + 14 + dlen] = rec
                frame_off[i], frame_len[i] = o, dlen + 14
                o += dlen + 14
            else:
                buf[o:o + dlen] = rec
                shift = min(dlen, 2) if dlt == 113 else min(dlen, 6) if dlt == 276 else 0
                if dlt == 276 and dlen >= 20:
                    buf[o + 18] = rec[0]
                    buf[o + 19] = rec[1]
                frame_off[i], frame_len[i] = o + shift, dlen - shift
                o += dlen
            rec_off[i], rec_len[i], wire[i] = p, dlen, length
            us = frac // 1000 if self.nsec else frac
            if us >= 1_000_000:
                self.usec_carried += 1
                s += us // 1_000_000
                us %= 1_000_000
            ts[i] = float(s) + float(us) * 1e-6
            if s > U32_MAX:
                self.out_of_range += 1
                s, us = U32_MAX, 999_999
            sec[i], usec[i] = s, us
            self.pos = pos + rh + caplen
            self.packets += 1
            i += 1
        return i
