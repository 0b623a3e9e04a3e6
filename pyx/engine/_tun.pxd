# The C contract of pyx/tun.pyx (engine._tun): batched read and write on a TUN device.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t


cdef class Tun:
    cdef readonly str name
    cdef readonly int fd
    cdef readonly object buffer, offsets, lengths, stamps, vnet
    cdef readonly Py_ssize_t capacity, slot
    cdef uint8_t* buf
    cdef int64_t* off
    cdef uint32_t* lens
    cdef public uint64_t rx, tx, tx_errors

    cdef Py_ssize_t read_c(self) noexcept nogil
    cdef Py_ssize_t write_c(self, const uint8_t* base, const int64_t* off, const uint32_t* lens,
                            const uint16_t* l3, const int32_t* idx, Py_ssize_t n) noexcept nogil
