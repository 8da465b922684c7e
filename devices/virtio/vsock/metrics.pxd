# The device's counters as C fields: the muxer bumps several per connect.
cdef class VsockMetrics:
    cdef public unsigned long long host_connects, guest_connects, connect_failures
    cdef public unsigned long long rx_packets, rx_bytes, tx_packets, tx_bytes
    cdef public unsigned long long resets_sent, credit_updates_sent, invalid_packets, open_streams
