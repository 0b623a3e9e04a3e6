# cython: language_level=3
"""tun: the virtual interface of host mode (draft-hong-mif), batched.

Takes   a device name.  ``Tun`` creates a TUN device (IFF_TUN | IFF_NO_PI; it exists while the
        file descriptor is open, so it disappears with mmr, addresses and routes included).
Emits   ``read_batch()``: every packet the stack has queued (up to the capacity), each
        stored after a 14-byte Ethernet header mmr writes itself (ethertype from the IP
        version), so the batch goes through the same parser as frames from a wire:
        (buffer, offsets, lengths), no Python object per packet.  The stack hands a TUN
        device finished packets (no offloads are offered), so their virtio-net headers
        (``vnet``) are zeros.
        ``write_batch()``: packets of a buffer (from their L3 offset) into the stack.
Counts  rx, tx, tx_errors.

Set-up is plain Python (open, ioctl): it runs once.  The read and write loops are C.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.errno cimport errno, EAGAIN, EINTR
from posix.unistd cimport read, write
from if_ether cimport ETH_HLEN, ETH_P_IP, ETH_P_IPV6

import fcntl
import os
import struct

import numpy as np

from engine import _kernel as K
from engine.constants import VNET_DTYPE
from engine.errors import UserError


cdef class Tun:
    def __init__(self, name, capacity=256, mtu=1500):
        if not os.path.exists("/dev/net/tun"):
            raise UserError("this machine has no /dev/net/tun; load the tun module "
                            "('modprobe tun') or give the container the device")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except PermissionError:
            raise UserError("opening /dev/net/tun was refused; run mmr host as root, or as a user with "
                            "CAP_NET_ADMIN and access to /dev/net/tun (mode 0666 on stock Debian)") from None
        try:
            fcntl.ioctl(fd, K.TUNSETIFF, struct.pack("16sH", name.encode(), K.IFF_TUN | K.IFF_NO_PI))
        except OSError as exc:
            os.close(fd)
            raise UserError(f"cannot create the TUN device {name!r} ({exc.strerror}); is a device "
                            f"of that name already there? ('ip link show {name}')") from None
        self.name = name
        self.fd = fd
        self.capacity = capacity
        self.slot = ((ETH_HLEN + mtu + 63) // 64) * 64 + 64
        self.buffer = np.zeros(self.capacity * self.slot, np.uint8)
        self.offsets = np.zeros(self.capacity, np.int64)
        self.lengths = np.zeros(self.capacity, np.uint32)
        self.stamps = np.zeros(self.capacity, np.float64)
        self.vnet = np.zeros(self.capacity, VNET_DTYPE)
        cdef uint8_t[::1] b = self.buffer
        cdef int64_t[::1] o = self.offsets
        cdef uint32_t[::1] l = self.lengths
        self.buf, self.off, self.lens = &b[0], &o[0], &l[0]
        self.rx = self.tx = self.tx_errors = 0

    def fileno(self):
        return self.fd

    cdef Py_ssize_t read_c(self) noexcept nogil:
        cdef Py_ssize_t i, k, n = 0, o
        cdef Py_ssize_t r
        if self.fd < 0:
            return 0
        for i in range(self.capacity):
            o = i * self.slot
            r = read(self.fd, self.buf + o + ETH_HLEN, self.slot - ETH_HLEN)
            if r <= 0:
                if r < 0 and errno == EINTR:
                    continue
                break
            # an Ethernet header of our own: zero MACs, ethertype from the version nibble
            for k in range(12):
                self.buf[o + k] = 0
            if (self.buf[o + ETH_HLEN] >> 4) == 6:
                self.buf[o + 12] = ETH_P_IPV6 >> 8
                self.buf[o + 13] = ETH_P_IPV6 & 0xFF
            else:
                self.buf[o + 12] = ETH_P_IP >> 8
                self.buf[o + 13] = ETH_P_IP & 0xFF
            self.off[n] = o
            self.lens[n] = <uint32_t>(r + ETH_HLEN)
            n += 1
        self.rx += n
        return n

    cdef Py_ssize_t write_c(self, const uint8_t* base, const int64_t* off, const uint32_t* lens,
                            const uint16_t* l3, const int32_t* idx, Py_ssize_t n) noexcept nogil:
        """Write base[off[j] + l3[j] : off[j] + lens[j]] for j in idx[0..n) (checked by the
        caller); returns packets written."""
        cdef Py_ssize_t i, j, length, r, done = 0
        for i in range(n):
            j = idx[i]
            length = lens[j] - l3[j]
            r = write(self.fd, base + off[j] + l3[j], length)
            if r == length:
                self.tx += 1
                done += 1
            else:
                self.tx_errors += 1
        return done

    def read_batch(self):
        """Read what the stack has queued: (n, buffer, offsets[:n], lengths[:n])."""
        cdef Py_ssize_t n
        with nogil:
            n = self.read_c()
        return n, self.buffer, self.offsets[:n], self.lengths[:n]

    def write_batch(self, const uint8_t[::1] buf, const int64_t[::1] offsets, const uint32_t[::1] lengths,
                    const int64_t[::1] l3_offsets, const int64_t[::1] index):
        """Write buf[offsets[j] + l3_offsets[j] : offsets[j] + lengths[j]] for j in index."""
        cdef Py_ssize_t i, j
        cdef Py_ssize_t blen = buf.shape[0]
        cdef Py_ssize_t m = index.shape[0]
        idx = np.zeros(max(m, 1), np.int32)
        l3 = np.zeros(max(offsets.shape[0], 1), np.uint16)
        cdef int32_t[::1] ix = idx
        cdef uint16_t[::1] l3v = l3
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
            self.write_c(&buf[0], &offsets[0], &lengths[0], &l3v[0], &ix[0], m)
        return self.tx

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
