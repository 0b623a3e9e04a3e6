# cython: language_level=3
"""tun: the virtual interface of host mode (draft-hong-mif), batched, with the offloads of
a virtio-net device.

Takes   a device name.  ``Tun`` creates a TUN device (IFF_TUN | IFF_NO_PI; it exists while the
        file descriptor is open, so it disappears with mmr, addresses and routes included).
        With ``offloads`` (the default) it asks for IFF_VNET_HDR, a 10-byte virtio-net header
        before every packet in both directions, and offers the stack, as userspace VPNs do,
        what the kernel here accepts (TUNSETOFFLOAD, probed from the most to the least):
        unfinished checksums (TUN_F_CSUM), TCP super-frames (TSO4, TSO6, TSO_ECN) and UDP
        super-frames (USO4 + USO6, Linux >= 6.2).  The stack then hands vi0 up to 64 KiB
        super-frames instead of segmenting them, and takes GRO super-frames whole.  A kernel
        that refuses the header gets the plain device (``vnet_hdr`` False, ``fallback``
        says why): one finished packet per read, as before.
Emits   ``read_batch()``: every packet the stack has queued (up to the capacity, and as
        many 64 KiB super-frames as the buffer holds), each stored after a 14-byte Ethernet
        header mmr writes itself (ethertype from the IP version), so the batch goes through
        the same parser as frames from a wire: (buffer, offsets, lengths), no Python object
        per packet.  ``vnet`` holds each packet's virtio-net header in the packet socket's
        convention (offsets from the frame start: ``vnet_from_tun``), so the frame can be
        sent on a packet socket with PACKET_VNET_HDR as it is and the kernel segments it
        for the egress device and finishes its checksums.  Without the header: zeros.
        ``write_batch()``: packets of a buffer (from their L3 offset) into the stack, behind
        their virtio-net header turned back to the TUN's convention (offsets from the IP
        header: ``vnet_to_tun``), so a GRO super-frame from an interface reaches the stack
        as one packet with its checksum still to be finished (the stack trusts it: it was
        verified where it was received, or made on this host).
Drops   a packet the kernel's header cannot describe in the other convention (an offset that
        does not fit), and on read one that filled the whole read room (cut): rx_errors /
        tx_errors.
Counts  rx, tx, rx_errors, tx_errors, rx_super (super-frames read), tx_super (written).

The TUN has no multi-packet read or write for a userspace reader (the batched ``msg_control``
interface is vhost-net's, inside the kernel): one read() / writev() per packet, which with
super-frames is one per up to 64 KiB.  Set-up is plain Python (open, ioctl): it runs once.
The read and write loops are C.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.errno cimport errno, EINTR
from libc.string cimport memcpy, memset
from posix.unistd cimport read, write
from if_ether cimport ETH_HLEN, ETH_P_IP, ETH_P_IPV6
from virtio_net cimport virtio_net_hdr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE
cimport if_tun as T

import errno as _errno
import fcntl
import os
import struct

import numpy as np

from engine.constants import VNET_DTYPE
from engine.errors import UserError

cdef extern from "<sys/uio.h>":
    struct iovec:
        void* iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec* iov, int iovcnt) nogil

DEF VNET_LEN = 10              # sizeof(struct virtio_net_hdr), set with TUNSETVNETHDRSZ
DEF SUPER_ROOM = 65536 + 64    # an IP super-frame: at most gso_max_size (64 KiB) bytes
DEF SUPER_FRAMES_MIN = 8       # the buffer holds at least this many whole super-frames

# what TUNSETOFFLOAD is asked for, from the most to the least (the kernel says EINVAL to a
# flag it does not know; USO4 and USO6 only go together)
OFFLOAD_NAMES = {T.TUN_F_CSUM: "csum", T.TUN_F_TSO4: "tso4", T.TUN_F_TSO6: "tso6",
                 T.TUN_F_TSO_ECN: "tso_ecn", T.TUN_F_USO4: "uso4", T.TUN_F_USO6: "uso6"}
_TSO = T.TUN_F_CSUM | T.TUN_F_TSO4 | T.TUN_F_TSO6
OFFLOAD_TRIES = [_TSO | T.TUN_F_TSO_ECN | T.TUN_F_USO4 | T.TUN_F_USO6, _TSO | T.TUN_F_USO4 | T.TUN_F_USO6,
                 _TSO | T.TUN_F_TSO_ECN, _TSO, T.TUN_F_CSUM]


def offload_names(unsigned int flags):
    """The names of TUN_F_* flags, in a fixed order."""
    return [name for bit, name in OFFLOAD_NAMES.items() if flags & bit]


cdef inline bint vnet_from_tun(virtio_net_hdr* h, uint32_t l2) noexcept nogil:
    """A header read from the TUN (offsets from the IP header) in place to the packet
    socket's convention (from the frame start: l2 bytes of link header before the IP
    header).  False when an offset would not fit 16 bits."""
    cdef uint32_t s = h.csum_start, hl = h.hdr_len
    if h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        s += l2
        if s > 0xFFFF:
            return False
        h.csum_start = <uint16_t>s
    if hl:
        hl += l2
        if hl > 0xFFFF:
            return False
        h.hdr_len = <uint16_t>hl
    return True


cdef inline bint vnet_to_tun(const virtio_net_hdr* src, virtio_net_hdr* dst, uint32_t l2) noexcept nogil:
    """A packet socket's header (offsets from the frame start, the IP header at l2) to the
    TUN's convention into dst.  False when the checksum to finish starts before the IP
    header (the TUN could not describe it)."""
    dst[0] = src[0]
    if src.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        if src.csum_start < l2:
            return False
        dst.csum_start = <uint16_t>(src.csum_start - l2)
    dst.hdr_len = <uint16_t>(src.hdr_len - l2) if src.hdr_len > l2 else 0
    return True


def _vnet_arg(vnet):
    vnet = np.ascontiguousarray(vnet)
    if vnet.dtype != VNET_DTYPE or vnet.ndim != 1:
        raise TypeError("give a 1-d VNET_DTYPE array")
    return vnet


def vnet_tun_to_packet(vnet, unsigned int l2=ETH_HLEN):
    """The compiled translation (vnet_from_tun) over an array: (headers, ok), a copy."""
    out = _vnet_arg(vnet).copy()
    ok = np.zeros(len(out), bool)
    if len(out) == 0 or l2 > 0xFFFF:
        return out, ok
    cdef uint8_t[::1] b = out.view(np.uint8)
    cdef virtio_net_hdr* h = <virtio_net_hdr*>&b[0]
    cdef Py_ssize_t i
    for i in range(len(out)):
        ok[i] = vnet_from_tun(&h[i], l2)
    return out, ok


def vnet_packet_to_tun(vnet, unsigned int l2=ETH_HLEN):
    """The compiled translation (vnet_to_tun) over an array: (headers, ok)."""
    src = _vnet_arg(vnet)
    out = np.zeros(len(src), VNET_DTYPE)
    ok = np.zeros(len(src), bool)
    if len(out) == 0 or l2 > 0xFFFF:
        return out, ok
    cdef const uint8_t[::1] a = src.view(np.uint8)
    cdef uint8_t[::1] b = out.view(np.uint8)
    cdef const virtio_net_hdr* s = <const virtio_net_hdr*>&a[0]
    cdef virtio_net_hdr* d = <virtio_net_hdr*>&b[0]
    cdef Py_ssize_t i
    for i in range(len(out)):
        ok[i] = vnet_to_tun(&s[i], &d[i], l2)
    return out, ok


def _open_tun(name):
    if not os.path.exists("/dev/net/tun"):
        raise UserError("this machine has no /dev/net/tun; load the tun module "
                        "('modprobe tun') or give the container the device")
    try:
        return os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError:
        raise UserError("opening /dev/net/tun was refused; run mmr host as root, or as a user with "
                        "CAP_NET_ADMIN and access to /dev/net/tun (mode 0666 on stock Debian)") from None


def _create(fd, name, flags):
    try:
        fcntl.ioctl(fd, T.TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    except OSError as exc:
        return exc
    return None


cdef class Tun:
    def __init__(self, name, capacity=256, mtu=1500, offloads=True):
        self.name = name
        self.fd = -1
        self.vnet_hdr = False
        self.more = False
        self.offloads = 0
        self.fallback = "" if offloads else "offloads switched off"
        fd = _open_tun(name)
        exc = None
        if offloads:
            exc = _create(fd, name, T.IFF_TUN | T.IFF_NO_PI | T.IFF_VNET_HDR)
            if exc is None:
                try:
                    fcntl.ioctl(fd, T.TUNSETVNETHDRSZ, struct.pack("i", VNET_LEN))
                    self.vnet_hdr = True
                except OSError as e:
                    self.fallback = f"TUNSETVNETHDRSZ refused ({e.strerror})"
                    os.close(fd)              # the device goes with its descriptor: make it again
                    fd = _open_tun(name)
                    exc = _create(fd, name, T.IFF_TUN | T.IFF_NO_PI)
            elif exc.errno in (_errno.EINVAL, _errno.EOPNOTSUPP):
                self.fallback = f"IFF_VNET_HDR refused ({exc.strerror})"
                exc = _create(fd, name, T.IFF_TUN | T.IFF_NO_PI)
        else:
            exc = _create(fd, name, T.IFF_TUN | T.IFF_NO_PI)
        if exc is not None:
            os.close(fd)
            raise UserError(f"cannot create the TUN device {name!r} ({exc.strerror}); is a device "
                            f"of that name already there? ('ip link show {name}')") from None
        self.fd = fd
        if self.vnet_hdr:
            for flags in OFFLOAD_TRIES:
                try:
                    fcntl.ioctl(fd, T.TUNSETOFFLOAD, flags)
                except OSError:
                    continue
                self.offloads = flags
                break
        self.capacity = capacity
        self.slot = ((ETH_HLEN + mtu + 63) // 64) * 64 + 64
        if self.vnet_hdr:
            # reads are packed one after the other; one more is tried while a whole
            # super-frame still fits
            self.room = SUPER_ROOM
            self.size = max(self.capacity * self.slot, SUPER_FRAMES_MIN * (SUPER_ROOM + 128)) + SUPER_ROOM + 128
        else:
            self.room = self.slot - ETH_HLEN
            self.size = self.capacity * self.slot
        self.buffer = np.zeros(self.size, np.uint8)
        self.offsets = np.zeros(self.capacity, np.int64)
        self.lengths = np.zeros(self.capacity, np.uint32)
        self.stamps = np.zeros(self.capacity, np.float64)
        self.vnet = np.zeros(self.capacity, VNET_DTYPE)
        cdef uint8_t[::1] b = self.buffer
        cdef int64_t[::1] o = self.offsets
        cdef uint32_t[::1] l = self.lengths
        cdef uint8_t[::1] v = self.vnet.view(np.uint8)
        self.buf, self.off, self.lens, self.vh = &b[0], &o[0], &l[0], <virtio_net_hdr*>&v[0]
        self.rx = self.tx = self.tx_errors = self.rx_errors = self.rx_super = self.tx_super = 0

    @property
    def offload_names(self):
        """The TUN_F_* offloads the kernel took, by name (empty without the header)."""
        return offload_names(self.offloads)

    def fileno(self):
        return self.fd

    cdef Py_ssize_t read_c(self) noexcept nogil:
        cdef Py_ssize_t k, n = 0, pos = 0, r, hl = VNET_LEN if self.vnet_hdr else 0
        cdef uint8_t* p
        cdef uint32_t length
        self.more = False
        if self.fd < 0:
            return 0
        while True:
            if n >= self.capacity or pos + ETH_HLEN + self.room > self.size:
                self.more = True             # full: the rest waits for the next call
                break
            p = self.buf + pos
            # the virtio-net header lands where the Ethernet header goes, the IP packet at 14
            r = read(self.fd, p + ETH_HLEN - hl, self.room + hl)
            if r <= 0:
                if r < 0 and errno == EINTR:
                    continue
                break
            if hl:
                memcpy(&self.vh[n], p + ETH_HLEN - hl, hl)
                if r <= hl or r - hl >= self.room or not vnet_from_tun(&self.vh[n], ETH_HLEN):
                    self.rx_errors += 1          # cut, or a header the frame cannot carry
                    continue
                if self.vh[n].gso_type != VIRTIO_NET_HDR_GSO_NONE:
                    self.rx_super += 1
            else:
                memset(&self.vh[n], 0, sizeof(virtio_net_hdr))
            # an Ethernet header of our own: zero MACs, ethertype from the version nibble
            for k in range(12):
                p[k] = 0
            if (p[ETH_HLEN] >> 4) == 6:
                p[12] = ETH_P_IPV6 >> 8
                p[13] = ETH_P_IPV6 & 0xFF
            else:
                p[12] = ETH_P_IP >> 8
                p[13] = ETH_P_IP & 0xFF
            length = <uint32_t>(r - hl + ETH_HLEN)
            self.off[n] = pos
            self.lens[n] = length
            pos += (length + 63) & ~(<Py_ssize_t>63)
            n += 1
        self.rx += n
        return n

    cdef Py_ssize_t write_c(self, const uint8_t* base, const int64_t* off, const uint32_t* lens,
                            const uint16_t* l3, const virtio_net_hdr* vh, const int32_t* idx,
                            Py_ssize_t n) noexcept nogil:
        """Write base[off[j] + l3[j] : off[j] + lens[j]] for j in idx[0..n) (checked by the
        caller), behind vh[j] (packet-socket convention; NULL: none) when the TUN takes a
        virtio-net header; returns packets written."""
        cdef Py_ssize_t i, j, length, r, done = 0
        cdef virtio_net_hdr h
        cdef iovec iov[2]
        for i in range(n):
            j = idx[i]
            length = lens[j] - l3[j]
            if self.vnet_hdr:
                if vh == NULL:
                    memset(&h, 0, sizeof(h))
                elif not vnet_to_tun(&vh[j], &h, l3[j]):
                    self.tx_errors += 1
                    continue
                iov[0].iov_base = &h
                iov[0].iov_len = VNET_LEN
                iov[1].iov_base = <void*>(base + off[j] + l3[j])
                iov[1].iov_len = length
                r = writev(self.fd, iov, 2) - VNET_LEN
            else:
                r = write(self.fd, base + off[j] + l3[j], length)
            if r == length:
                self.tx += 1
                done += 1
                if self.vnet_hdr and h.gso_type != VIRTIO_NET_HDR_GSO_NONE:
                    self.tx_super += 1
            else:
                self.tx_errors += 1
        return done

    def read_batch(self):
        """Read what the stack has queued: (n, buffer, offsets[:n], lengths[:n]); vnet[:n]
        holds their virtio-net headers (packet-socket convention)."""
        cdef Py_ssize_t n
        with nogil:
            n = self.read_c()
        return n, self.buffer, self.offsets[:n], self.lengths[:n]

    def write_batch(self, const uint8_t[::1] buf, const int64_t[::1] offsets, const uint32_t[::1] lengths,
                    const int64_t[::1] l3_offsets, const int64_t[::1] index, vnet=None):
        """Write buf[offsets[j] + l3_offsets[j] : offsets[j] + lengths[j]] for j in index,
        behind vnet[j] (VNET_DTYPE, packet-socket convention) if given."""
        cdef Py_ssize_t i, j
        cdef Py_ssize_t blen = buf.shape[0]
        cdef Py_ssize_t m = index.shape[0]
        cdef const virtio_net_hdr* vp = NULL
        cdef const uint8_t[::1] vb
        idx = np.zeros(max(m, 1), np.int32)
        l3 = np.zeros(max(offsets.shape[0], 1), np.uint16)
        cdef int32_t[::1] ix = idx
        cdef uint16_t[::1] l3v = l3
        if vnet is not None:
            vnet = _vnet_arg(vnet)
            if vnet.shape[0] < offsets.shape[0]:
                raise ValueError("vnet must cover every packet")
            if vnet.shape[0]:
                vb = vnet.view(np.uint8)
                vp = <const virtio_net_hdr*>&vb[0]
        for i in range(m):
            j = index[i]
            if j < 0 or j >= offsets.shape[0] or j >= lengths.shape[0] or j >= l3_offsets.shape[0] \
                    or offsets[j] < 0 or offsets[j] > blen \
                    or lengths[j] > blen - offsets[j] or l3_offsets[j] < 0 or l3_offsets[j] >= lengths[j] \
                    or l3_offsets[j] > 0xFFFF:
                raise ValueError(f"packet {j} is outside the buffer")
            ix[i] = <int32_t>j
            l3v[j] = <uint16_t>l3_offsets[j]
        if m == 0:
            return self.tx
        with nogil:
            self.write_c(&buf[0], &offsets[0], &lengths[0], &l3v[0], vp, &ix[0], m)
        return self.tx

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
