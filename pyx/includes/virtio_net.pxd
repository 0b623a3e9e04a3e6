# <linux/virtio_net.h>: struct virtio_net_hdr, which PACKET_VNET_HDR puts in front of every
# frame on a packet socket (RX: what the kernel knows about checksum and segmentation; TX:
# what it should still do).  Little-endian on the machines mmr runs on (virtio 1.0 layout).
from libc.stdint cimport uint8_t, uint16_t

cdef extern from *:
    """
    #include <linux/virtio_net.h>
    /* from <linux/virtio_net.h> of Linux >= 6.2; older headers lack it */
    #ifndef VIRTIO_NET_HDR_GSO_UDP_L4
    #define VIRTIO_NET_HDR_GSO_UDP_L4 5
    #endif
    """
    struct virtio_net_hdr:
        uint8_t flags
        uint8_t gso_type
        uint16_t hdr_len
        uint16_t gso_size
        uint16_t csum_start
        uint16_t csum_offset

    enum:
        VIRTIO_NET_HDR_F_NEEDS_CSUM     # complete the checksum: sum from csum_start, store at +csum_offset
        VIRTIO_NET_HDR_F_DATA_VALID
        VIRTIO_NET_HDR_GSO_NONE
        VIRTIO_NET_HDR_GSO_TCPV4
        VIRTIO_NET_HDR_GSO_UDP
        VIRTIO_NET_HDR_GSO_TCPV6
        VIRTIO_NET_HDR_GSO_UDP_L4
        VIRTIO_NET_HDR_GSO_ECN
