"""Architecture-specific VMM code (only x86-64 today: vmm.arch.x86)."""
