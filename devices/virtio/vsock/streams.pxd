# One device's stream tables (streams.pyx), typed for the muxer and the device loop.
from devices.virtio.vsock.connection cimport Connection
from devices.virtio.vsock.metrics cimport VsockMetrics


cdef class StreamTable:
    cdef public VsockMetrics metrics
    cdef public dict conns, _local_ports, by_fd, rx_ready, connecting
    cdef public unsigned long long next_port

    cpdef double next_deadline(self)
    cpdef unsigned long long _alloc_port(self)
    cpdef _add(self, Connection c)
    cpdef _remove(self, Connection c)
