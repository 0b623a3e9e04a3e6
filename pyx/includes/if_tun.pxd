# <linux/if_tun.h>: creating a TUN device, its virtio-net header and offloads.
cdef extern from *:
    """
    #include <sys/ioctl.h>
    #include <linux/if_tun.h>
    static const unsigned long mmr_tunsetiff = TUNSETIFF;   /* an _IOW() ioctl number */
    static const unsigned long mmr_tunsetoffload = TUNSETOFFLOAD;
    static const unsigned long mmr_tunsetvnethdrsz = TUNSETVNETHDRSZ;
    /* from <linux/if_tun.h> of Linux >= 6.2; older headers lack them */
    #ifndef TUN_F_USO4
    #define TUN_F_USO4 0x20
    #endif
    #ifndef TUN_F_USO6
    #define TUN_F_USO6 0x40
    #endif
    """
    const unsigned long TUNSETIFF "mmr_tunsetiff"
    const unsigned long TUNSETOFFLOAD "mmr_tunsetoffload"
    const unsigned long TUNSETVNETHDRSZ "mmr_tunsetvnethdrsz"
    enum:
        IFF_TUN
        IFF_NO_PI
        IFF_VNET_HDR
        TUN_F_CSUM          # the stack may hand over unfinished checksums (NEEDS_CSUM)
        TUN_F_TSO4          # TCP/IPv4 super-frames
        TUN_F_TSO6          # TCP/IPv6 super-frames
        TUN_F_TSO_ECN       # ... with CWR set (ECN)
        TUN_F_USO4          # UDP super-frames (UDP_SEGMENT, GSO_UDP_L4): IPv4 and IPv6 together
        TUN_F_USO6
