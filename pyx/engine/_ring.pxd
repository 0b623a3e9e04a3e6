# The C contract of pyx/ring.pyx (the module engine._ring): what other compiled stages may
# call without Python in between.  The path mirrors the module's import name, which Cython
# needs to import the types at run time.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t
from virtio_net cimport virtio_net_hdr
from sys_net cimport mmsghdr, iovec


cdef class RxRing:
    cdef readonly str ifname
    cdef readonly object sock
    cdef readonly int fd
    cdef uint8_t* base                  # ring slots, then the side area for long frames
    cdef size_t map_len, ring_len
    cdef readonly uint32_t frame_size, frame_nr
    cdef uint32_t cur, held_first, held_n
    cdef size_t side_used
    cdef readonly Py_ssize_t capacity
    cdef readonly object offsets, lengths, stamps, vnet, vlan, view
    cdef int64_t* off
    cdef uint32_t* lens
    cdef double* ts
    cdef virtio_net_hdr* vh
    cdef uint8_t* vlanp
    cdef public uint64_t frames, truncated, copied, csum_not_ready, gso, vlan_stripped, resynced
    cdef readonly bint l3               # a device without a link header: frames get an Ethernet one

    cdef Py_ssize_t batch_c(self, Py_ssize_t max_frames) noexcept nogil
    cdef ssize_t read_copy(self, uint8_t* dst, uint32_t want, size_t room) noexcept nogil
    cdef void release_c(self) noexcept nogil
    cdef bint ready_c(self) noexcept nogil


cdef class TxSocket:
    cdef readonly str ifname
    cdef readonly object sock
    cdef readonly int fd
    cdef mmsghdr* msgs
    cdef iovec* iov
    cdef Py_ssize_t cap
    cdef public uint64_t sent, errors, bytes
    cdef public int last_errno
    cdef readonly bint l3               # a device without a link header: the Ethernet one is left out
    cdef int ifindex
    cdef void* names                    # l3: a sockaddr_ll per message (the protocol of each)
    cdef virtio_net_hdr* vtmp           # l3: each message's header, csum_start without the 14 bytes

    cdef Py_ssize_t send_c(self, const uint8_t* base, const int64_t* off, const uint32_t* lens,
                           const virtio_net_hdr* vh, const int32_t* idx, Py_ssize_t n) noexcept nogil
