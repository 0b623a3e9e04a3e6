# cython: language_level=3
"""ring: AF_PACKET TPACKET_V2 receive rings and batched transmit, with virtio-net headers.

Takes   a device name.  ``RxRing`` maps a TPACKET_V2 RX ring: one slot per frame, each
        handed over by the kernel on its own, so a lone frame is ready the moment it
        arrives (and poll() wakes) while frames that arrive during a batch's work simply
        queue up and form the next batch.  PACKET_VNET_HDR puts a virtio-net header before
        every frame: checksum state (NEEDS_CSUM: the sender left the checksum to the
        device) and segmentation (a GSO super-frame and its segment size).  A frame longer
        than a slot (a super-frame made by GRO or by a local TSO sender) is not cut: the
        kernel queues a full copy on the socket (PACKET_COPY_THRESH) and the batch reads it
        into a side area after the ring, in order.  Our own transmissions are ignored
        (PACKET_IGNORE_OUTGOING).
        ``TxSocket`` sends many frames in one sendmmsg(), each behind its virtio-net header
        (the kernel segments super-frames and finishes checksums a header asks for),
        bypassing the qdisc where asked.
Emits   ``RxRing.batch()``: (offsets, lengths, stamps, vnet) of every frame the kernel has
        handed over, as views over the ring memory itself: no copy, no Python object per
        frame.  The caller processes (and may rewrite in place) the frames, then
        ``release()`` hands the slots back.
Counts  frames, copied (long frames read from the socket), truncated (too long and no copy
        could be queued: dropped, never half-sent), csum_not_ready, gso, vlan_stripped, and
        the kernel's PACKET_STATISTICS (packets, drops: ring full).

Socket set-up is plain Python (socket, setsockopt): it runs once.  The walk over the slots,
the reads of long frames and the sendmmsg loop are C.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.string cimport memset, memcpy
from libc.errno cimport errno, EINTR, ENOBUFS, EAGAIN
from cpython.mem cimport PyMem_Malloc, PyMem_Free

from if_packet cimport (tpacket2_hdr, tpacket_req, TP_STATUS_KERNEL, TP_STATUS_USER,
                        TP_STATUS_COPY, TP_STATUS_CSUMNOTREADY, TP_STATUS_VLAN_VALID)
from virtio_net cimport virtio_net_hdr, VIRTIO_NET_HDR_GSO_NONE
from sys_net cimport (iovec, msghdr, mmsghdr, sendmmsg, recv, mmap, munmap, MAP_FAILED,
                      PROT_READ, PROT_WRITE, MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED,
                      MAP_NORESERVE, MSG_DONTWAIT, MSG_TRUNC)
cimport if_packet

import socket
import struct

import numpy as np

from engine import _kernel as K
from engine.constants import VNET_DTYPE
from engine.errors import UserError

cdef extern from *:
    """
    static inline uint32_t mmr_load_acquire(const uint32_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void mmr_store_release(uint32_t* p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    """
    uint32_t load_acquire "mmr_load_acquire"(const uint32_t* p) nogil
    void store_release "mmr_store_release"(uint32_t* p, uint32_t v) nogil

cdef extern from "<linux/if_packet.h>":
    struct sockaddr_ll:
        unsigned short sll_family
        unsigned short sll_protocol
        int sll_ifindex
        unsigned short sll_hatype
        unsigned char sll_pkttype
        unsigned char sll_halen
        unsigned char sll_addr[8]

cdef extern from "<arpa/inet.h>":
    uint16_t htons(uint16_t) nogil

ARPHRD_ETHER = 1


def link_type(name):
    """The device's ARPHRD type (1: Ethernet; PPP, raw IP, TUN, tunnels: no Ethernet header)."""
    try:
        return int(open(f"/sys/class/net/{name}/type").read())
    except (OSError, ValueError):
        return ARPHRD_ETHER

DEF VNET = 10                 # sizeof(struct virtio_net_hdr)
DEF COPY_SLOT = 65536 + 1024  # a long frame read from the socket: vnet header + up to 64 KiB + L2
DEF COPY_SLOTS = 16           # long frames per batch (a batch ends early when they are used up)


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
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(K.ETH_P_ALL))
    except PermissionError:
        raise UserError("opening an AF_PACKET socket needs root or CAP_NET_RAW; run mmr as root "
                        "(or grant CAP_NET_RAW and CAP_NET_ADMIN)") from None
    s.setsockopt(K.SOL_PACKET, K.PACKET_VNET_HDR, 1)     # before the ring: the kernel insists
    return s


def slot_size(mtu):
    """Ring slot for a device of this MTU: the TPACKET_V2 header, the virtio-net header, an
    Ethernet header with two VLAN tags and the MTU, rounded up to a power of two (>= 2 KiB)."""
    need = K.TPACKET2_HDRLEN + 16 + VNET + 14 + 8 + int(mtu)
    size = 2048
    while size < need:
        size *= 2
    return size


cdef class RxRing:
    def __cinit__(self):
        self.base = NULL
        self.held_n = 0

    def __init__(self, ifname, frames=8192, mtu=1500, capacity=1024, promisc=False):
        self.l3 = link_type(ifname) != ARPHRD_ETHER
        """A ring of ``frames`` slots sized for ``mtu``; batches of at most ``capacity``."""
        self.ifname = ifname
        cdef uint32_t fs = slot_size(mtu)
        cdef uint32_t block = max(fs, 1 << 16)
        cdef uint32_t per_block = block // fs
        cdef uint32_t nblocks = max(1, (int(frames) + per_block - 1) // per_block)
        self.frame_size = fs
        self.frame_nr = nblocks * per_block
        self.ring_len = <size_t>block * nblocks
        self.map_len = self.ring_len + <size_t>COPY_SLOT * COPY_SLOTS
        s = _packet_socket(ifname)
        try:
            s.setsockopt(K.SOL_PACKET, K.PACKET_VERSION, K.TPACKET_V2)
            try:
                s.setsockopt(K.SOL_PACKET, K.PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                pass   # kernels before 4.20: our own frames come back; the datapath ignores them by MAC
            s.setsockopt(K.SOL_PACKET, K.PACKET_COPY_THRESH, 1)
            try:       # room for the copies of long frames (root may exceed rmem_max)
                s.setsockopt(socket.SOL_SOCKET, K.SO_RCVBUFFORCE, 8 << 20)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            s.setsockopt(K.SOL_PACKET, K.PACKET_RX_RING,
                         struct.pack("4I", block, nblocks, fs, self.frame_nr))
            s.bind((ifname, K.ETH_P_ALL))
            if promisc:
                mreq = struct.pack("iHH8s", socket.if_nametoindex(ifname), K.PACKET_MR_PROMISC, 0, b"")
                s.setsockopt(K.SOL_PACKET, K.PACKET_ADD_MEMBERSHIP, mreq)
        except OSError as exc:
            s.close()
            raise UserError(f"cannot set up a TPACKET_V2 ring on {ifname} ({exc.strerror}); "
                            "mmr needs Linux >= 4.20 and root or CAP_NET_RAW") from None
        self.sock = s
        self.fd = s.fileno()
        # one address range: the ring (shared with the kernel), then anonymous memory for
        # the long frames, so every frame of a batch is an offset into one buffer
        cdef void* area = mmap(NULL, self.map_len, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if area == MAP_FAILED:
            s.close()
            raise MemoryError(f"cannot reserve {self.map_len} bytes for the ring of {ifname}")
        if mmap(area, self.ring_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, self.fd, 0) == MAP_FAILED:
            munmap(area, self.map_len)
            s.close()
            raise UserError(f"cannot map the ring of {ifname}")
        self.base = <uint8_t*>area
        self.view = np.asarray(<uint8_t[:self.map_len]> self.base)
        self.capacity = int(capacity)
        self.offsets = np.zeros(self.capacity, np.int64)
        self.lengths = np.zeros(self.capacity, np.uint32)
        self.stamps = np.zeros(self.capacity, np.float64)
        self.vnet = np.zeros(self.capacity, VNET_DTYPE)
        self.vlan = np.zeros(self.capacity, np.uint8)
        cdef uint8_t[::1] vl = self.vlan
        self.vlanp = &vl[0]
        cdef int64_t[::1] o = self.offsets
        cdef uint32_t[::1] l = self.lengths
        cdef double[::1] t = self.stamps
        cdef uint8_t[::1] v = self.vnet.view(np.uint8)
        self.off, self.lens, self.ts, self.vh = &o[0], &l[0], &t[0], <virtio_net_hdr*>&v[0]
        self.cur = 0

    def fileno(self):
        return self.fd

    @property
    def buffer(self):
        """The ring memory (and side area) as a writable uint8 array: frames are rewritten in
        place.  Valid until close()."""
        if self.base == NULL:
            raise ValueError("the ring is closed")
        return self.view

    cdef bint ready_c(self) noexcept nogil:
        cdef tpacket2_hdr* h = <tpacket2_hdr*>(self.base + <size_t>self.cur * self.frame_size)
        return (load_acquire(&h.tp_status) & TP_STATUS_USER) != 0

    cdef Py_ssize_t batch_c(self, Py_ssize_t max_frames) noexcept nogil:
        """Collect the frames of the slots the kernel has handed over, from cur on."""
        cdef Py_ssize_t n = 0
        cdef uint32_t slot, status
        cdef tpacket2_hdr* h
        cdef uint8_t* s
        cdef ssize_t r
        cdef uint8_t* dst
        cdef uint8_t v
        if self.held_n or self.base == NULL:
            return 0
        if max_frames <= 0 or max_frames > self.capacity:
            max_frames = self.capacity
        self.held_first = self.cur
        self.side_used = 0
        while n < max_frames and self.held_n < self.frame_nr:
            slot = (self.held_first + self.held_n) % self.frame_nr
            s = self.base + <size_t>slot * self.frame_size
            h = <tpacket2_hdr*>s
            status = load_acquire(&h.tp_status)
            if not (status & TP_STATUS_USER):
                break
            if h.tp_snaplen < h.tp_len:          # longer than a slot
                if not (status & TP_STATUS_COPY):
                    self.truncated += 1              # no copy could be queued: dropped, counted
                    self.held_n += 1
                    continue
                if self.side_used + COPY_SLOT > <size_t>COPY_SLOT * COPY_SLOTS:
                    break                            # side area full: the rest next batch
                dst = self.base + self.ring_len + self.side_used
                if self.l3:
                    dst += 16                        # room for the Ethernet header in front
                r = self.read_copy(dst, h.tp_len, COPY_SLOT - 16 if self.l3 else COPY_SLOT)
                self.held_n += 1
                if r < VNET + (1 if self.l3 else 14) or r > COPY_SLOT - (16 if self.l3 else 0):
                    self.truncated += 1
                    continue
                self.side_used += COPY_SLOT
                self.copied += 1
                memcpy(&self.vh[n], dst, VNET)
                self.off[n] = <int64_t>(dst - self.base) + VNET
                self.lens[n] = <uint32_t>(r - VNET)
            else:
                memcpy(&self.vh[n], s + h.tp_mac - VNET, VNET)
                self.off[n] = <int64_t>slot * self.frame_size + h.tp_mac
                self.lens[n] = h.tp_snaplen
                self.held_n += 1
            if self.l3:
                # an IP packet without a link header: an Ethernet header goes in front (over the
                # virtio-net header, copied out above; the slot has 16 bytes before it), zero
                # MACs (the device has none), the type from the IP version; csum_start follows
                dst = self.base + self.off[n] - 14
                memset(dst, 0, 12)
                v = (dst[14] >> 4) if self.lens[n] else 0
                dst[12] = 0x08 if v == 4 else (0x86 if v == 6 else 0)
                dst[13] = 0x00 if v == 4 else (0xDD if v == 6 else 0)
                self.off[n] -= 14
                self.lens[n] += 14
                if self.vh[n].flags & 1:                  # VIRTIO_NET_HDR_F_NEEDS_CSUM
                    self.vh[n].csum_start += 14
                if self.vh[n].hdr_len:
                    self.vh[n].hdr_len += 14
            self.ts[n] = h.tp_sec + h.tp_nsec * 1e-9
            if status & TP_STATUS_CSUMNOTREADY:
                self.csum_not_ready += 1
            self.vlanp[n] = 0
            if status & TP_STATUS_VLAN_VALID:
                self.vlan_stripped += 1
                self.vlanp[n] = 1                  # another device's (a VLAN of this one)
            if self.vh[n].gso_type != VIRTIO_NET_HDR_GSO_NONE:
                self.gso += 1
            n += 1
        self.frames += n
        return n

    cdef ssize_t read_copy(self, uint8_t* dst, uint32_t want, size_t room) noexcept nogil:
        """The queued copy of a long frame of ``want`` bytes, into dst (vnet header first; at
        most ``room`` bytes written).
        A pending socket error (ENETDOWN after the device went down and up) is returned once
        by recv and cleared: read again.  A copy of another length belongs to a slot whose
        copy was lost: skip it, so the queue and the ring stay in step."""
        cdef ssize_t r = -1
        cdef int tries = 0
        while tries < 8:
            tries += 1
            r = recv(self.fd, dst, room, MSG_DONTWAIT | MSG_TRUNC)
            if r < 0:
                if errno == EAGAIN:
                    return -1
                continue                          # EINTR, or a pending error now cleared
            if r == VNET + want:
                return r
            self.resynced += 1
        return -1

    cdef void release_c(self) noexcept nogil:
        cdef uint32_t i, slot
        cdef tpacket2_hdr* h
        for i in range(self.held_n):
            slot = (self.held_first + i) % self.frame_nr
            h = <tpacket2_hdr*>(self.base + <size_t>slot * self.frame_size)
            store_release(&h.tp_status, TP_STATUS_KERNEL)
        self.cur = (self.held_first + self.held_n) % self.frame_nr
        self.held_n = 0

    def ready(self):
        """A frame is waiting (no system call: the next slot's status word)."""
        return self.base != NULL and self.ready_c()

    def batch(self, max_frames=0):
        """Frames of every slot the kernel has handed over (at most max_frames, 0 = the
        capacity).  Returns n; offsets, lengths, stamps and vnet[:n] describe them until
        release()."""
        if self.held_n:
            raise RuntimeError("release() the previous batch first")
        if self.base == NULL:
            raise ValueError("the ring is closed")
        cdef Py_ssize_t n, m = max_frames
        with nogil:
            n = self.batch_c(m)
        return n

    def release(self):
        """Hand the slots of the last batch back to the kernel."""
        self.release_c()

    def kernel_stats(self):
        """PACKET_STATISTICS (read and reset by the kernel): packets, drops (ring full)."""
        raw = self.sock.getsockopt(K.SOL_PACKET, K.PACKET_STATISTICS, 8)
        p, d = struct.unpack("2I", raw)
        return {"packets": p, "drops": d}

    def close(self):
        if self.held_n:
            self.release_c()
        if self.base != NULL:
            self.view = None
            munmap(self.base, self.map_len)
            self.base = NULL
        if self.sock is not None:
            self.sock.close()

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.map_len)


cdef class TxSocket:
    """Batched transmit: one sendmmsg() per batch of frames taken from one buffer, each frame
    behind its virtio-net header (zeros: a finished frame)."""

    def __cinit__(self):
        self.msgs = NULL
        self.iov = NULL
        self.names = NULL
        self.vtmp = NULL

    def __init__(self, ifname, qdisc_bypass=True, capacity=1024):
        self.ifname = ifname
        s = _packet_socket(ifname)
        if qdisc_bypass:
            try:
                s.setsockopt(K.SOL_PACKET, K.PACKET_QDISC_BYPASS, 1)
            except OSError:
                pass
        s.bind((ifname, 0))
        try:        # super-frames in flight until the device completes them: room, never a wait
            s.setsockopt(socket.SOL_SOCKET, K.SO_SNDBUFFORCE, 4 << 20)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock = s
        self.fd = s.fileno()
        self.cap = capacity
        self.l3 = link_type(ifname) != ARPHRD_ETHER
        self.ifindex = ifindex(ifname)
        self.msgs = <mmsghdr*>PyMem_Malloc(capacity * sizeof(mmsghdr))
        self.iov = <iovec*>PyMem_Malloc(2 * capacity * sizeof(iovec))
        self.names = PyMem_Malloc(capacity * sizeof(sockaddr_ll))
        self.vtmp = <virtio_net_hdr*>PyMem_Malloc(capacity * sizeof(virtio_net_hdr))
        if self.msgs == NULL or self.iov == NULL or self.names == NULL or self.vtmp == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.msgs)
        PyMem_Free(self.iov)
        PyMem_Free(self.names)
        PyMem_Free(self.vtmp)

    cdef Py_ssize_t send_c(self, const uint8_t* base, const int64_t* off, const uint32_t* lens,
                           const virtio_net_hdr* vh, const int32_t* idx, Py_ssize_t n) noexcept nogil:
        """Send frames idx[0..n) (their virtio-net header vh[j], or a zero header when vh is
        NULL); the caller checked every offset.  Returns frames sent; a frame the kernel
        refuses is counted in errors and skipped, the rest still go."""
        cdef Py_ssize_t i, j, done = 0, chunk, sent0 = self.sent
        cdef int r
        cdef sockaddr_ll* sa
        cdef virtio_net_hdr zero
        memset(&zero, 0, sizeof(zero))
        while done < n:
            chunk = n - done if n - done < self.cap else self.cap
            memset(self.msgs, 0, chunk * sizeof(mmsghdr))
            for i in range(chunk):
                j = idx[done + i]
                self.iov[2 * i].iov_base = <void*>(&vh[j] if vh != NULL else &zero)
                self.iov[2 * i].iov_len = VNET
                self.iov[2 * i + 1].iov_base = <void*>(base + off[j])
                self.iov[2 * i + 1].iov_len = lens[j]
                self.msgs[i].msg_hdr.msg_iov = &self.iov[2 * i]
                self.msgs[i].msg_hdr.msg_iovlen = 2
                if self.l3 and lens[j] > 14:
                    # no link header on this device: the IP packet alone, its protocol named
                    # per message (PPP needs it), csum_start without the 14 bytes
                    self.iov[2 * i + 1].iov_base = <void*>(base + off[j] + 14)
                    self.iov[2 * i + 1].iov_len = lens[j] - 14
                    memcpy(&self.vtmp[i], &vh[j] if vh != NULL else &zero, VNET)
                    if self.vtmp[i].flags & 1 and self.vtmp[i].csum_start >= 14:
                        self.vtmp[i].csum_start -= 14
                    if self.vtmp[i].hdr_len >= 14:
                        self.vtmp[i].hdr_len -= 14
                    self.iov[2 * i].iov_base = <void*>&self.vtmp[i]
                    sa = &(<sockaddr_ll*>self.names)[i]
                    memset(sa, 0, sizeof(sockaddr_ll))
                    sa.sll_family = 17                   # AF_PACKET
                    sa.sll_ifindex = self.ifindex
                    sa.sll_protocol = htons(0x86DD if (base[off[j] + 14] >> 4) == 6 else 0x0800)
                    self.msgs[i].msg_hdr.msg_name = <void*>sa
                    self.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_ll)
            r = sendmmsg(self.fd, self.msgs, <unsigned int>chunk, MSG_DONTWAIT)
            if r < 0:
                if errno == EINTR:
                    continue
                self.last_errno = errno
                if errno == EAGAIN or errno == ENOBUFS:
                    self.errors += chunk      # the device (or its qdisc) is full: drop, never wait
                    done += chunk
                    continue
                self.errors += 1          # the first frame of the chunk was refused: skip it
                done += 1
                continue
            for i in range(r):
                self.bytes += self.msgs[i].msg_len
            self.sent += r
            if r == 0:
                self.errors += 1
                done += 1
            else:
                done += r
        return self.sent - sent0

    def send(self, const uint8_t[::1] buf, const int64_t[::1] offsets, const uint32_t[::1] lengths,
             index, vnet=None):
        """Send frames buf[offsets[j]:offsets[j]+lengths[j]] for j in index, behind vnet[j]
        (a VNET_DTYPE array) or a zero header; returns frames sent."""
        cdef int32_t[::1] ix = np.ascontiguousarray(index, dtype=np.int32)
        cdef Py_ssize_t n = ix.shape[0], i, j
        cdef Py_ssize_t blen = buf.shape[0]
        cdef const uint8_t[::1] vb
        cdef const virtio_net_hdr* vp = NULL
        if vnet is not None:
            if vnet.dtype != VNET_DTYPE or not vnet.flags.c_contiguous:
                raise TypeError("vnet must be a C-contiguous VNET_DTYPE array")
            if vnet.shape[0] < offsets.shape[0]:
                raise ValueError("vnet must cover every frame")
            if vnet.shape[0]:
                vb = vnet.view(np.uint8)
                vp = <const virtio_net_hdr*>&vb[0]
        if lengths.shape[0] < offsets.shape[0]:
            raise ValueError("lengths must cover every frame")
        for i in range(n):
            j = ix[i]
            if j < 0 or j >= offsets.shape[0] or offsets[j] < 0 or offsets[j] > blen \
                    or lengths[j] > blen - offsets[j]:
                raise ValueError(f"frame {j} is outside the buffer")
        if n == 0:
            return 0
        cdef Py_ssize_t k
        with nogil:
            k = self.send_c(&buf[0], &offsets[0], &lengths[0], vp, &ix[0], n)
        return k

    def send_frames(self, frames):
        """Convenience for rare paths (ICMP errors) and tests: a list of bytes."""
        from engine.frames import pack_frames
        buf, off, ln = pack_frames(frames)
        return self.send(buf, off, ln, np.arange(len(frames), dtype=np.int32))

    def close(self):
        self.sock.close()

