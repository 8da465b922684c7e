"""virtio-vsock with a real Linux guest: echo in both directions, 100 concurrent streams
each way, over Firecracker's host socket model.

Host → guest: the host connects to the device's Unix socket and writes `CONNECT 5000\\n`,
reaching the guest's mmsock echo server. Guest → host: the guest's mmsock connects to
CID 2 port 6000, which the device turns into a connection to the listener at
`<socket>_6000`, an echo server in the runner. Both sides open every stream before any
data moves and check every byte. One boot.
"""
from __future__ import annotations

import os

from tests.e2e.virtio_guest import boot, fields, guest_kernel, host_report, initramfs, lines, mmsock_binary

STREAMS, SIZE = 100, 64 << 10
GUEST_PORT, HOST_PORT = 5000, 6000

GUEST = f"""
timeout 300 mmsock serve vsock {GUEST_PORT} {STREAMS} & server=$!
timeout 300 mmsock connect vsock 2 {HOST_PORT} {STREAMS} {SIZE}
echo "MM-CLIENT rc=$?"
wait $server
echo "MM-SERVER rc=$?"
read line
"""


def test_echo_both_ways_100_concurrent_streams(guest_host):
    kernel = guest_kernel()
    initrd = initramfs(guest_host.workdir, GUEST, tools={"mmsock": mmsock_binary()})
    uds = f"/tmp/mm-e2e-vsock-{os.getpid()}/v.sock"  # the guest host's /tmp (sockets need a local fs)
    res = boot(guest_host, kernel, initrd, "--vsock", f"3:{uds}", "--vsock-echo", HOST_PORT,
               "--vsock-client", f"{GUEST_PORT}:{STREAMS}:{SIZE}")
    out = res.stdout
    tail = out[-5000:]
    # guest -> host: 100 streams through <uds>_6000, every byte echoed back intact
    assert lines(out, "MM-SOCK-CONNECTED") == [f"MM-SOCK-CONNECTED {STREAMS}"], tail
    assert lines(out, "MM-SOCK-ECHOED") == [f"MM-SOCK-ECHOED ok={STREAMS} of {STREAMS} bytes={SIZE}"], tail
    assert lines(out, "MM-CLIENT ") == ["MM-CLIENT rc=0"], tail
    server = fields(lines(out, "MM-HOST-VSOCK-ECHO-SERVER ")[0])
    assert server == {"done": str(STREAMS), "bytes": str(STREAMS * SIZE), "errors": "0"}, tail
    # host -> guest: 100 CONNECT streams to the guest's port
    assert host_report(out, "MM-HOST-VSOCK-CLIENT") == {"ok": STREAMS, "connected": STREAMS, "errors": []}, tail
    assert lines(out, "MM-SOCK-SERVED") == [f"MM-SOCK-SERVED {STREAMS} failed=0"], tail
    metrics = host_report(out, "MM-HOST-METRICS")["VsockDevice"]
    assert metrics["host_connects"] == STREAMS and metrics["guest_connects"] == STREAMS, metrics
    assert metrics["invalid_packets"] == 0 and metrics["connect_failures"] == 0, metrics
    assert metrics["open_streams"] == 0, metrics  # every stream was closed on both sides
    assert "MM-HOST exit=poweroff" in out, tail
