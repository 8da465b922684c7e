"""The streams of one virtio-vsock device and their indexes: by key (the two ports), by
host socket fd, and by host port (to hand out free ones), with the connect deadlines of
host-initiated streams and the set of streams whose socket is to be read. The muxer
(muxer.pyx) is one; the device thread reads these tables as C fields (streams.pxd)."""
from . import FIRST_LOCAL_PORT

from devices.virtio.vsock.connection cimport Connection
from devices.virtio.vsock.metrics cimport VsockMetrics


cdef class StreamTable:
    def __init__(self, VsockMetrics metrics) -> None:
        self.metrics = metrics
        self.conns = {}  # stream_key(local port, peer port) -> Connection
        self._local_ports = {}  # host port -> its streams (no O(n) scan)
        self.by_fd = {}
        self.rx_ready = {}  # key -> Connection whose socket has input for the guest
        self.connecting = {}  # host-initiated stream's key -> deadline (monotonic seconds)
        self.next_port = FIRST_LOCAL_PORT

    cpdef double next_deadline(self):
        """The earliest connect deadline (monotonic seconds), -1 when no stream waits."""
        cdef double best = -1, due
        for value in self.connecting.values():
            due = value
            if best < 0 or due < best:
                best = due
        return best

    cpdef unsigned long long _alloc_port(self):
        cdef unsigned long long port
        while True:
            port = self.next_port
            self.next_port = FIRST_LOCAL_PORT if self.next_port >= 0xFFFFFFFF else self.next_port + 1
            if port not in self._local_ports:
                return port

    cpdef _add(self, Connection c):
        self.conns[c.key] = c
        self._local_ports[c.local_port] = self._local_ports.get(c.local_port, 0) + 1
        self.by_fd[c.fd] = c
        self.metrics.open_streams = len(self.conns)

    cpdef _remove(self, Connection c):
        if self.conns.pop(c.key, None) is not None:
            left = self._local_ports[c.local_port] - 1
            if left:
                self._local_ports[c.local_port] = left
            else:
                del self._local_ports[c.local_port]
        self.connecting.pop(c.key, None)
        self.by_fd.pop(c.fd, None)
        self.rx_ready.pop(c.key, None)
        c.close()
        self.metrics.open_streams = len(self.conns)
