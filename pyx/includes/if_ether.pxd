# <linux/if_ether.h>: ethertypes and the Ethernet header length.
cdef extern from "<linux/if_ether.h>":
    enum:
        ETH_HLEN
        ETH_ALEN
        ETH_P_ALL
        ETH_P_IP
        ETH_P_IPV6
        ETH_P_ARP
        ETH_P_8021Q
        ETH_P_8021AD
