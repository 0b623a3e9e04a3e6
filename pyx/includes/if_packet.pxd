# <linux/if_packet.h>: packet socket options and the TPACKET_V2 ring.  Declared once here;
# values come from the header at build time.  pyx/ring.pyx uses them, pyx/kernel.pyx
# exports the ones Python needs.
from libc.stdint cimport uint8_t, uint16_t, uint32_t

cdef extern from "<linux/if_packet.h>":
    # struct tpacket2_hdr: the header in front of every frame slot of a TPACKET_V2 ring
    struct tpacket2_hdr:
        uint32_t tp_status
        uint32_t tp_len
        uint32_t tp_snaplen
        uint16_t tp_mac
        uint16_t tp_net
        uint32_t tp_sec
        uint32_t tp_nsec
        uint16_t tp_vlan_tci
        uint16_t tp_vlan_tpid

    # struct tpacket_req: the PACKET_RX_RING request of TPACKET_V1/V2
    struct tpacket_req:
        unsigned int tp_block_size
        unsigned int tp_block_nr
        unsigned int tp_frame_size
        unsigned int tp_frame_nr

    # struct tpacket_stats: PACKET_STATISTICS of TPACKET_V1/V2 (reset when read)
    struct tpacket_stats:
        unsigned int tp_packets
        unsigned int tp_drops

    enum:
        PACKET_ADD_MEMBERSHIP
        PACKET_RX_RING
        PACKET_STATISTICS
        PACKET_COPY_THRESH
        PACKET_VERSION
        PACKET_VNET_HDR
        PACKET_QDISC_BYPASS
        PACKET_IGNORE_OUTGOING
        PACKET_MR_PROMISC
        PACKET_OUTGOING
        TPACKET_V2
        TPACKET_ALIGNMENT
        TPACKET2_HDRLEN

        # tp_status bits, RX
        TP_STATUS_KERNEL
        TP_STATUS_USER
        TP_STATUS_COPY              # too long for the slot; a full copy waits on the socket
        TP_STATUS_LOSING
        TP_STATUS_CSUMNOTREADY      # checksum left for the device (a local or veth sender)
        TP_STATUS_VLAN_VALID
        TP_STATUS_CSUM_VALID
