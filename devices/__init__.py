"""Device models. Never imports `vmm`: devices get memory, interrupts and events through devices.interfaces."""
