# cython: language_level=3
"""Capture walker: the records of a classic pcap held in memory (``mmr replay`` maps the
file), written straight into the batch ``Pipeline.process`` takes -- no Python object per
packet.  The rules (what a record is, when the walk stops, how each link type becomes an
Ethernet frame, the times) are those of the reference, engine/ref/pcapwalk.py, which the
tests hold it to on generated and mutated bytes.

Memory: every read is checked against the size of the mapping before it is made (a record
header, then the record); every write against the batch buffer and arrays, whose sizes are
checked once per call.  The walk always moves forward (by a header and a caplen of at most
262144), so it ends on any input."""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t
from libc.string cimport memcpy, memset

cdef enum:
    MAX_CAPLEN = 262144

cdef int64_t U32_MAX = 0xFFFFFFFF

FRAME_ROOM = 262144 + 14

cdef enum:
    NOT_SWAPPED = 0
    SWAPPED = 1
    MAYBE_SWAPPED = 2

cdef enum:
    GO = 0
    END = 1
    CUT_HEADER = 2
    CUT_DATA = 3
    CORRUPT_CAPLEN = 4


cdef inline uint32_t rd32(const uint8_t* p, bint big) noexcept nogil:
    if big:
        return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]
    return (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]


cdef inline uint32_t rd16(const uint8_t* p, bint big) noexcept nogil:
    if big:
        return (<uint32_t>p[0] << 8) | p[1]
    return (<uint32_t>p[1] << 8) | p[0]


cdef class PcapWalk:
    """Walks the records of the classic pcap in ``data`` (any buffer), for link type ``dlt``;
    the interface of engine.ref.pcapwalk.PcapWalk.  ``release()`` lets go of ``data`` (an
    mmap can then be closed)."""

    cdef const uint8_t[::1] data
    cdef readonly Py_ssize_t size, pos, packets, usec_carried, out_of_range, at
    cdef readonly int rec_hdr, swap, dlt
    cdef readonly uint32_t snapshot
    cdef readonly bint nsec, big, done
    cdef int why
    cdef uint32_t e_caplen, e_want
    cdef Py_ssize_t e_avail

    def __init__(self, data, int dlt):
        cdef const uint8_t[::1] d = data
        cdef uint32_t magic, snaplen, linktype
        cdef unsigned major, minor
        self.data = d
        self.size = d.shape[0]
        if self.size < 24:
            raise ValueError("not a pcap: shorter than its file header")
        magic = rd32(&d[0], False)
        if magic == 0xA1B2C3D4 or magic == 0xD4C3B2A1:
            self.nsec, self.rec_hdr = False, 16
        elif magic == 0xA1B23C4D or magic == 0x4D3CB2A1:
            self.nsec, self.rec_hdr = True, 16
        elif magic == 0xA1B2CD34 or magic == 0x34CDB2A1:
            self.nsec, self.rec_hdr = False, 24
        else:
            raise ValueError("not a pcap: unknown magic")
        self.big = magic in (0xD4C3B2A1, 0x4D3CB2A1, 0x34CDB2A1)
        major = rd16(&d[4], self.big)
        minor = rd16(&d[6], self.big)
        if major < 2 or (major == 2 and minor < 3):
            self.swap = SWAPPED
        elif major == 2 and minor == 3:
            self.swap = MAYBE_SWAPPED
        else:
            self.swap = NOT_SWAPPED
        snaplen = rd32(&d[16], self.big)
        linktype = rd32(&d[20], self.big)
        self.snapshot = MAX_CAPLEN if snaplen == 0 or snaplen > 0x7FFFFFFF else snaplen
        if self.rec_hdr == 24 and (linktype & 0x03FFFFFF) == 1:
            self.snapshot += 14                      # wraps as a uint32_t, as in the reference
        self.dlt = dlt
        self.pos = 24
        self.packets = self.usec_carried = self.out_of_range = 0
        self.done = False
        self.why = GO
        self.at = -1

    def release(self):
        """Let go of the buffer (the walk is over after this)."""
        self.data = None
        self.size = 0
        self.done = True

    @property
    def kind(self):
        if self.why == CUT_HEADER or self.why == CUT_DATA:
            return "cut"
        if self.why == CORRUPT_CAPLEN:
            return "corrupt"
        return None

    @property
    def error(self):
        if self.why == CUT_HEADER:
            return (f"truncated dump file; tried to read {self.rec_hdr} header bytes, "
                    f"only got {self.e_avail}")
        if self.why == CUT_DATA:
            return (f"truncated dump file; tried to read {self.e_want} captured bytes, "
                    f"only got {self.e_avail}")
        if self.why == CORRUPT_CAPLEN:
            if self.e_caplen > self.snapshot:
                return (f"invalid packet capture length {self.e_caplen}, bigger than "
                        f"snaplen of {<int32_t>self.snapshot}")
            return (f"invalid packet capture length {self.e_caplen}, bigger than "
                    f"maximum of {MAX_CAPLEN}")
        return ""

    def next_batch(self, uint8_t[::1] buf, int64_t[::1] frame_off, uint32_t[::1] frame_len,
                   int64_t[::1] rec_off, int64_t[::1] rec_len, uint32_t[::1] wire,
                   int64_t[::1] sec, int64_t[::1] usec, double[::1] ts):
        cdef Py_ssize_t n = frame_off.shape[0]
        if (frame_len.shape[0] < n or rec_off.shape[0] < n or rec_len.shape[0] < n
                or wire.shape[0] < n or sec.shape[0] < n or usec.shape[0] < n or ts.shape[0] < n):
            raise ValueError("next_batch: every array must hold as many entries as frame_off")
        if buf is None or buf.shape[0] < MAX_CAPLEN + 14:
            raise ValueError(f"next_batch: the buffer must hold at least {MAX_CAPLEN + 14} bytes")
        if self.done or n == 0:
            return 0
        return self._walk(&buf[0], buf.shape[0], n, &frame_off[0], &frame_len[0], &rec_off[0],
                          &rec_len[0], &wire[0], &sec[0], &usec[0], &ts[0])

    cdef Py_ssize_t _walk(self, uint8_t* out, Py_ssize_t room, Py_ssize_t n, int64_t* frame_off,
                          uint32_t* frame_len, int64_t* rec_off, int64_t* rec_len,
                          uint32_t* wire, int64_t* sec, int64_t* usec, double* ts) noexcept:
        cdef const uint8_t* d = &self.data[0]
        cdef Py_ssize_t size = self.size, pos = self.pos, left, avail, p, o = 0, i = 0
        cdef Py_ssize_t rh = self.rec_hdr
        cdef bint big = self.big
        cdef int dlt = self.dlt, swap = self.swap
        cdef uint32_t caplen, length, frac, dlen, t, snapshot = self.snapshot, shift
        cdef int64_t s, us
        cdef int version
        cdef bint raw = dlt == 12 or dlt == 14 or dlt == 101 or dlt == 228 or dlt == 229
        while i < n:
            left = size - pos
            if left == 0:
                self.done = True
                break
            if left < rh:
                self._stop(CUT_HEADER, pos, 0, 0, left)
                break
            caplen = rd32(d + pos + 8, big)
            length = rd32(d + pos + 12, big)
            if swap == SWAPPED or (swap == MAYBE_SWAPPED and caplen > length):
                t = caplen
                caplen = length
                length = t
            if caplen > MAX_CAPLEN:
                self._stop(CORRUPT_CAPLEN, pos, caplen, 0, 0)
                break
            dlen = caplen if caplen < snapshot else snapshot
            avail = left - rh
            if avail < <Py_ssize_t>caplen:
                self._stop(CUT_DATA, pos, caplen, dlen if avail < <Py_ssize_t>dlen else caplen,
                           avail)
                break
            if o + <Py_ssize_t>dlen + 14 > room:
                break                                  # the buffer is full: the next batch
            p = pos + rh
            if raw:
                if dlt == 228:
                    version = 4
                elif dlt == 229:
                    version = 6
                else:
                    version = d[p] >> 4 if dlen else 0
                memset(out + o, 0, 12)
                out[o + 12] = 0x08 if version == 4 else 0x86 if version == 6 else 0
                out[o + 13] = 0xDD if version == 6 else 0
                memcpy(out + o + 14, d + p, dlen)
                frame_off[i] = o
                frame_len[i] = dlen + 14
                o += dlen + 14
            else:
                memcpy(out + o, d + p, dlen)
                shift = 0
                if dlt == 113:
                    shift = dlen if dlen < 2 else 2
                elif dlt == 276:
                    shift = dlen if dlen < 6 else 6
                    if dlen >= 20:
                        out[o + 18] = d[p]
                        out[o + 19] = d[p + 1]
                frame_off[i] = o + shift
                frame_len[i] = dlen - shift
                o += dlen
            rec_off[i] = p
            rec_len[i] = dlen
            wire[i] = length
            s = rd32(d + pos, big)
            frac = rd32(d + pos + 4, big)
            us = frac // 1000 if self.nsec else frac
            if us >= 1000000:
                self.usec_carried += 1
                s += us // 1000000
                us = us % 1000000
            ts[i] = <double>s + <double>us * 1e-6
            if s > U32_MAX:
                self.out_of_range += 1
                s = U32_MAX
                us = 999999
            sec[i] = s
            usec[i] = us
            pos = p + caplen
            i += 1
        self.pos = pos
        self.packets += i
        return i

    cdef void _stop(self, int why, Py_ssize_t at, uint32_t caplen, uint32_t want,
                    Py_ssize_t avail) noexcept:
        self.done = True
        self.why = why
        self.at = at
        self.e_caplen = caplen
        self.e_want = want
        self.e_avail = avail
