"""The per-VM worker process.

`launch.start_worker` starts it detached from the CLI (double fork + setsid) and waits
until it reports ready. The worker (`main.run_worker`) opens everything it needs first —
the store, its log files, the machine (which opens /dev/kvm, memory, devices, taps) and
its API socket — and only then runs the VM, so it can later jail itself between the two
(issue 9). `service.WorkerService` answers the control API (vmm/api/PROTOCOL.md) and
records how the VM ended. The VM itself is anything implementing `vm.VirtualMachine`.
"""
