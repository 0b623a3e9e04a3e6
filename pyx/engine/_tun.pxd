# The C contract of pyx/tun.pyx (engine._tun): batched read and write on a TUN device.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from virtio_net cimport virtio_net_hdr


cdef class Tun:
    cdef readonly str name
    cdef readonly int fd
    cdef readonly object buffer, offsets, lengths, stamps, vnet
    cdef readonly str fallback           # why the TUN has no virtio-net header ("" when it has one)
    cdef readonly Py_ssize_t capacity, slot, room, size
    cdef readonly bint vnet_hdr          # IFF_VNET_HDR taken: super-frames and unfinished checksums
    cdef readonly unsigned int offloads  # the TUN_F_* flags the kernel accepted
    cdef uint8_t* buf
    cdef int64_t* off
    cdef uint32_t* lens
    cdef virtio_net_hdr* vh              # per packet read: packet-socket convention (from the frame start)
    cdef public uint64_t rx, tx, tx_errors, rx_errors, rx_super, tx_super
    cdef readonly bint more              # the last read_c stopped with packets still queued

    cdef Py_ssize_t read_c(self) noexcept nogil
    cdef Py_ssize_t write_c(self, const uint8_t* base, const int64_t* off, const uint32_t* lens,
                            const uint16_t* l3, const virtio_net_hdr* vh, const int32_t* idx,
                            Py_ssize_t n) noexcept nogil
