# <linux/if_tun.h>: creating a TUN device.
cdef extern from *:
    """
    #include <sys/ioctl.h>
    #include <linux/if_tun.h>
    static const unsigned long mmr_tunsetiff = TUNSETIFF;   /* an _IOW() ioctl number */
    """
    const unsigned long TUNSETIFF "mmr_tunsetiff"
    enum:
        IFF_TUN
        IFF_NO_PI
