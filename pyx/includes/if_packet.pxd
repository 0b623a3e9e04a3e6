# TPACKET_V3 ring structures and constants, from <linux/if_packet.h>; sendmmsg from
# <sys/socket.h>.  Declared once here; pyx/ring.pyx uses them.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "<linux/if_packet.h>":
    # struct tpacket_bd_ts (linux/if_packet.h)
    struct tpacket_bd_ts:
        uint32_t ts_sec
        uint32_t ts_nsec
    # struct tpacket_hdr_v1: the block header of a TPACKET_V3 block
    struct tpacket_hdr_v1:
        uint32_t block_status
        uint32_t num_pkts
        uint32_t offset_to_first_pkt
        uint32_t blk_len
        uint64_t seq_num
        tpacket_bd_ts ts_first_pkt
        tpacket_bd_ts ts_last_pkt
    union tpacket_bd_header_u:
        tpacket_hdr_v1 bh1
    struct tpacket_block_desc:
        uint32_t version
        uint32_t offset_to_priv
        tpacket_bd_header_u hdr
    struct tpacket_hdr_variant1:
        uint32_t tp_rxhash
        uint32_t tp_vlan_tci
        uint16_t tp_vlan_tpid
        uint16_t tp_padding
    # struct tpacket3_hdr: one frame inside a block
    struct tpacket3_hdr:
        uint32_t tp_next_offset
        uint32_t tp_sec
        uint32_t tp_nsec
        uint32_t tp_snaplen
        uint32_t tp_len
        uint32_t tp_status
        uint16_t tp_mac
        uint16_t tp_net
        tpacket_hdr_variant1 hv1

    enum:
        TP_STATUS_KERNEL
        TP_STATUS_USER
        TP_STATUS_COPY
        TP_STATUS_LOSING
        TP_STATUS_CSUMNOTREADY
        TP_STATUS_VLAN_VALID

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
