# cython: language_level=3
"""tun: the virtual interface of host mode (draft-hong-mif), batched.

Takes   a device name.  ``Tun`` creates a TUN device (IFF_TUN | IFF_NO_PI; it exists while the
        file descriptor is open, so it disappears with mmr, addresses and routes included).
Emits   ``read_batch()``: every packet the stack has queued (up to the capacity), each
        stored after a 14-byte Ethernet header mmr writes itself (ethertype from the IP
        version), so the batch goes through the same parser as frames from a wire:
        (buffer, offsets, lengths), no Python object per packet.
        ``write_batch()``: packets of a buffer (from their L3 offset) into the stack.
Counts  rx, tx, tx_errors.

Set-up is plain Python (open, ioctl): it runs once.  The read and write loops are C.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.errno cimport errno, EAGAIN, EINTR
from posix.unistd cimport read, write

import fcntl
import os
import struct

import numpy as np

from engine.errors import UserError

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
cdef enum:
    ETH = 14


cdef class Tun:
    cdef readonly str name
    cdef readonly int fd
    cdef readonly object buffer, offsets, lengths
    cdef readonly Py_ssize_t capacity, slot
    cdef public uint64_t rx, tx, tx_errors

    def __init__(self, name, capacity=256, mtu=1500):
        if not os.path.exists("/dev/net/tun"):
            raise UserError("this machine has no /dev/net/tun; load the tun module "
                            "('modprobe tun') or give the container the device")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except PermissionError:
            raise UserError("opening /dev/net/tun needs root (CAP_NET_ADMIN); run mmr host as root") from None
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        except OSError as exc:
            os.close(fd)
            raise UserError(f"cannot create the TUN device {name!r} ({exc.strerror}); is a device "
                            f"of that name already there? ('ip link show {name}')") from None
        self.name = name
        self.fd = fd
        self.capacity = capacity
        self.slot = ((ETH + mtu + 63) // 64) * 64 + 64
        self.buffer = np.zeros(self.capacity * self.slot, np.uint8)
        self.offsets = np.zeros(self.capacity, np.int64)
        self.lengths = np.zeros(self.capacity, np.uint32)
        self.rx = self.tx = self.tx_errors = 0

    def fileno(self):
        return self.fd

    def read_batch(self):
        """Read what the stack has queued: (n, buffer, offsets[:n], lengths[:n])."""
        cdef uint8_t[::1] buf = self.buffer
        cdef int64_t[::1] off = self.offsets
        cdef uint32_t[::1] ln = self.lengths
        cdef Py_ssize_t i, k, n = 0, o
        cdef Py_ssize_t r
        cdef int fd = self.fd
        cdef Py_ssize_t slot = self.slot
        cdef Py_ssize_t cap = self.capacity
        with nogil:
            for i in range(cap):
                o = i * slot
                r = read(fd, &buf[o + ETH], slot - ETH)
                if r <= 0:
                    if r < 0 and errno == EINTR:
                        continue
                    break
                # an Ethernet header of our own: zero MACs, ethertype from the version nibble
                for k in range(12):
                    buf[o + k] = 0
                if (buf[o + ETH] >> 4) == 6:
                    buf[o + 12] = 0x86
                    buf[o + 13] = 0xDD
                else:
                    buf[o + 12] = 0x08
                    buf[o + 13] = 0x00
                off[n] = o
                ln[n] = <uint32_t>(r + ETH)
                n += 1
            self.rx += n
        return n, self.buffer, self.offsets[:n], self.lengths[:n]

    def write_batch(self, const uint8_t[::1] buf, const int64_t[::1] offsets, const uint32_t[::1] lengths,
                    const int64_t[::1] l3_offsets, const int64_t[::1] index):
        """Write buf[offsets[j] + l3_offsets[j] : offsets[j] + lengths[j]] for j in index."""
        cdef Py_ssize_t i, j, start, length
        cdef Py_ssize_t blen = buf.shape[0]
        cdef Py_ssize_t r
        cdef int fd = self.fd
        for i in range(index.shape[0]):
            j = index[i]
            if j < 0 or j >= offsets.shape[0] or offsets[j] < 0 or offsets[j] + lengths[j] > blen \
                    or l3_offsets[j] < 0 or l3_offsets[j] >= lengths[j]:
                raise ValueError(f"packet {j} is outside the buffer")
        with nogil:
            for i in range(index.shape[0]):
                j = index[i]
                start = offsets[j] + l3_offsets[j]
                length = lengths[j] - l3_offsets[j]
                r = write(fd, &buf[start], length)
                if r == length:
                    self.tx += 1
                else:
                    self.tx_errors += 1
        return self.tx

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
