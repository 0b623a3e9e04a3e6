# cython: language_level=3
"""ring: AF_PACKET TPACKET_V3 receive rings and batched transmit.

Takes   a device name.  ``RxRing`` maps a TPACKET_V3 RX ring (blocks of frames the kernel
        fills; our own transmissions are ignored with PACKET_IGNORE_OUTGOING); ``TxSocket``
        sends many frames in one sendmmsg() call, bypassing the qdisc where asked.
Emits   ``RxRing.batch()``: frames of every block the kernel has handed over, as (buffer,
        offsets, lengths, timestamps) over the ring memory itself: no copy, no Python
        object per frame.  The caller processes (and may rewrite in place) the frames, then
        ``release()`` hands the blocks back.
Counts  frames, blocks, truncated (snaplen < wire length: never forwarded silently),
        csum_not_ready (checksum offloaded by a local sender), vlan_stripped, and the
        kernel's PACKET_STATISTICS (packets, drops, queue freezes).

Socket set-up is plain Python (socket, setsockopt, mmap): it runs once.  The per-batch walk
over block headers and the sendmmsg loop are C.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memset
from cpython.mem cimport PyMem_Malloc, PyMem_Free

from if_packet cimport (tpacket_block_desc, tpacket3_hdr, TP_STATUS_USER, TP_STATUS_KERNEL,
                        TP_STATUS_VLAN_VALID, TP_STATUS_CSUMNOTREADY, iovec, msghdr, mmsghdr,
                        sendmmsg)
from libc.errno cimport errno, EINTR, ENOBUFS, EAGAIN

import mmap
import os
import socket
import struct

import numpy as np

from engine.errors import UserError

# from <linux/if_packet.h> and <linux/if_ether.h>
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
PACKET_MR_PROMISC = 1
TPACKET_V3 = 2
ETH_P_ALL = 0x0003


def ifindex(name):
    """Device index, or a UserError naming the device."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise UserError(f"device {name!r} does not exist; check the device names in the policy "
                        "file ('ip link' lists them)") from None


def _packet_socket(name):
    ifindex(name)
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except PermissionError:
        raise UserError("opening an AF_PACKET socket needs root or CAP_NET_RAW; run mmr as root "
                        "(or grant CAP_NET_RAW and CAP_NET_ADMIN)") from None
    return s


cdef class RxRing:
    cdef readonly str ifname
    cdef readonly object sock
    cdef object mm
    cdef uint8_t* base
    cdef readonly uint32_t block_size, block_count
    cdef uint32_t cur            # next block to look at
    cdef uint32_t held_first, held_n
    cdef public uint64_t frames, blocks, truncated, csum_not_ready, vlan_stripped
    cdef object offsets, lengths, stamps
    cdef Py_ssize_t cap

    def __init__(self, ifname, block_size=1 << 20, block_count=8, frame_size=2048,
                 timeout_ms=10, promisc=True):
        self.ifname = ifname
        s = _packet_socket(ifname)
        try:
            s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            try:
                s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                pass   # kernels before 4.20: our own transmissions come back and are ignored by MAC
            req = struct.pack("7I", block_size, block_count, frame_size,
                              (block_size // frame_size) * block_count, timeout_ms, 0, 0)
            s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.mm = mmap.mmap(s.fileno(), block_size * block_count, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)
            s.bind((ifname, ETH_P_ALL))
            if promisc:
                mreq = struct.pack("iHH8s", socket.if_nametoindex(ifname), PACKET_MR_PROMISC, 0, b"")
                s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        except OSError as exc:
            s.close()
            raise UserError(f"cannot set up a TPACKET_V3 ring on {ifname} ({exc.strerror}); "
                            "mmr needs Linux >= 3.19 and root") from None
        self.sock = s
        self.block_size = block_size
        self.block_count = block_count
        cdef uint8_t[::1] view = self.mm
        self.base = &view[0]
        self.cur = 0
        self.held_n = 0
        self.cap = (block_size // 64) * block_count
        self.offsets = np.zeros(self.cap, np.int64)
        self.lengths = np.zeros(self.cap, np.uint32)
        self.stamps = np.zeros(self.cap, np.float64)

    def fileno(self):
        return self.sock.fileno()

    @property
    def buffer(self):
        """The ring memory as a writable uint8 array (frames are rewritten in place)."""
        return np.frombuffer(self.mm, dtype=np.uint8)

    def batch(self, max_blocks=0):
        """Frames of every block the kernel has handed over (at most max_blocks, 0 = all).
        Returns (n, offsets, lengths, timestamps); the arrays are views valid until
        release()."""
        if self.held_n:
            raise RuntimeError("release() the previous batch first")
        cdef int64_t[::1] off = self.offsets
        cdef uint32_t[::1] ln = self.lengths
        cdef double[::1] ts = self.stamps
        cdef tpacket_block_desc* bd
        cdef tpacket3_hdr* h
        cdef uint32_t b, k, npk
        cdef size_t boff, foff
        cdef Py_ssize_t n = 0
        cdef uint32_t limit = max_blocks if max_blocks > 0 else self.block_count
        self.held_first = self.cur
        with nogil:
            while self.held_n < limit:
                b = (self.held_first + self.held_n) % self.block_count
                boff = <size_t>b * self.block_size
                bd = <tpacket_block_desc*>(self.base + boff)
                if not (bd.hdr.bh1.block_status & TP_STATUS_USER):
                    break
                npk = bd.hdr.bh1.num_pkts
                foff = bd.hdr.bh1.offset_to_first_pkt
                for k in range(npk):
                    h = <tpacket3_hdr*>(self.base + boff + foff)
                    if h.tp_snaplen < h.tp_len:
                        self.truncated += 1
                    else:
                        off[n] = <int64_t>(boff + foff + h.tp_mac)
                        ln[n] = h.tp_snaplen
                        ts[n] = h.tp_sec + h.tp_nsec * 1e-9
                        n += 1
                    if h.tp_status & TP_STATUS_CSUMNOTREADY:
                        self.csum_not_ready += 1
                    if h.tp_status & TP_STATUS_VLAN_VALID:
                        self.vlan_stripped += 1
                    foff += h.tp_next_offset
                self.held_n += 1
                self.blocks += 1
            self.frames += n
        return n, self.offsets[:n], self.lengths[:n], self.stamps[:n]

    def release(self):
        """Hand the blocks of the last batch back to the kernel."""
        cdef uint32_t i, b
        cdef tpacket_block_desc* bd
        for i in range(self.held_n):
            b = (self.held_first + i) % self.block_count
            bd = <tpacket_block_desc*>(self.base + <size_t>b * self.block_size)
            bd.hdr.bh1.block_status = TP_STATUS_KERNEL
        self.cur = (self.held_first + self.held_n) % self.block_count
        self.held_n = 0

    def kernel_stats(self):
        """PACKET_STATISTICS (read and reset by the kernel): packets, drops, freeze_q_cnt."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        p, d, f = struct.unpack("3I", raw)
        return {"packets": p, "drops": d, "freeze_q_cnt": f}

    def close(self):
        if self.held_n:
            self.release()
        self.base = NULL
        try:
            self.mm.close()
        except BufferError:
            pass
        self.sock.close()


cdef class TxSocket:
    """Batched transmit: one sendmmsg() per batch of frames taken from one buffer."""
    cdef readonly str ifname
    cdef readonly object sock
    cdef int fd
    cdef mmsghdr* msgs
    cdef iovec* iov
    cdef Py_ssize_t cap
    cdef public uint64_t sent, errors, bytes
    cdef public int last_errno

    def __init__(self, ifname, qdisc_bypass=True, capacity=1024):
        self.ifname = ifname
        s = _packet_socket(ifname)
        if qdisc_bypass:
            try:
                s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            except OSError:
                pass
        s.bind((ifname, 0))
        self.sock = s
        self.fd = s.fileno()
        self.cap = capacity
        self.msgs = <mmsghdr*>PyMem_Malloc(capacity * sizeof(mmsghdr))
        self.iov = <iovec*>PyMem_Malloc(capacity * sizeof(iovec))
        if self.msgs == NULL or self.iov == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.msgs)
        PyMem_Free(self.iov)

    def send(self, const uint8_t[::1] buf, const int64_t[::1] offsets, const uint32_t[::1] lengths,
             const int64_t[::1] index):
        """Send frames buf[offsets[j]:offsets[j]+lengths[j]] for j in index; returns sent."""
        cdef Py_ssize_t n = index.shape[0]
        cdef Py_ssize_t i, j, done = 0, chunk
        cdef int r
        cdef Py_ssize_t blen = buf.shape[0]
        for i in range(n):
            j = index[i]
            if j < 0 or j >= offsets.shape[0] or offsets[j] < 0 or offsets[j] + lengths[j] > blen:
                raise ValueError(f"frame {j} is outside the buffer")
        if n == 0:
            return 0
        cdef const uint8_t* base = &buf[0]
        with nogil:
            while done < n:
                chunk = n - done if n - done < self.cap else self.cap
                memset(self.msgs, 0, chunk * sizeof(mmsghdr))
                for i in range(chunk):
                    j = index[done + i]
                    self.iov[i].iov_base = <void*>(base + offsets[j])
                    self.iov[i].iov_len = lengths[j]
                    self.msgs[i].msg_hdr.msg_iov = &self.iov[i]
                    self.msgs[i].msg_hdr.msg_iovlen = 1
                r = sendmmsg(self.fd, self.msgs, <unsigned int>chunk, 0)
                if r < 0:
                    if errno == EINTR:
                        continue
                    self.last_errno = errno
                    if errno == ENOBUFS or errno == EAGAIN:
                        self.errors += 1
                        done += 1        # drop the head frame, keep going
                        continue
                    self.errors += chunk
                    done += chunk
                    continue
                for i in range(r):
                    self.bytes += self.msgs[i].msg_len
                self.sent += r
                if r == 0:
                    self.errors += 1
                    done += 1
                else:
                    done += r
        return self.sent

    def send_frames(self, frames):
        """Convenience for rare paths (ICMP errors) and tests: a list of bytes."""
        from engine.frames import pack_frames
        buf, off, ln = pack_frames(frames)
        before = self.sent
        self.send(buf, off, ln, np.arange(len(frames), dtype=np.int64))
        return self.sent - before

    def close(self):
        self.sock.close()
