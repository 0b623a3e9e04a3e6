# <sys/socket.h>, <poll.h>, <sys/mman.h>: batched socket I/O, readiness and the ring mapping.
from libc.stdint cimport uint8_t

cdef extern from "<sys/socket.h>":
    struct iovec:
        void* iov_base
        size_t iov_len
    struct msghdr:
        void* msg_name
        unsigned int msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int sendmmsg(int fd, mmsghdr* msgvec, unsigned int vlen, int flags) nogil
    ssize_t recv(int fd, void* buf, size_t n, int flags) nogil
    enum:
        SOL_PACKET
        MSG_DONTWAIT
        MSG_TRUNC
        SO_RCVBUFFORCE          # root may go past the rmem_max / wmem_max limits
        SO_SNDBUFFORCE
        SO_TIMESTAMPNS          # receive time (CLOCK_REALTIME, ns) as ancillary data
        SCM_TIMESTAMPNS

cdef extern from "<poll.h>":
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, unsigned long nfds, int timeout) nogil
    enum:
        POLLIN
        POLLERR
        POLLHUP
        POLLNVAL

cdef extern from "<sys/mman.h>":
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset) nogil
    int munmap(void* addr, size_t length) nogil
    void* MAP_FAILED
    enum:
        PROT_READ
        PROT_WRITE
        MAP_SHARED
        MAP_PRIVATE
        MAP_ANONYMOUS
        MAP_FIXED
        MAP_NORESERVE

cdef extern from *:
    """
    #include <poll.h>
    #include <time.h>
    """
    struct timespec:
        long tv_sec
        long tv_nsec
    int ppoll(pollfd* fds, unsigned long nfds, const timespec* tmo, const void* sigmask) nogil
