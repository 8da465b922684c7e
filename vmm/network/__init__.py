"""VM networking: per-VM namespaces with fixed guest addressing, IPAM, NAT, published ports.

Public API (details in `vmm.network.attachment` and docs/network.md):
- `attach(vm_id, network="mm", publish=(), owner_pid=None) -> NetworkAttachment`
- `detach(vm_id)`, `lookup(vm_id)`, `set_owner(vm_id, pid)`, `open_tap(attachment) -> fd`
- `vmm.network.manage`: `create`, `remove`, `list_all`, `inspect`, `prune` for `mm network`.
Submodules are imported on first use so importing this package stays cheap.
"""
from __future__ import annotations

__all__ = ["attach", "detach", "lookup", "open_tap", "set_owner", "NetworkAttachment"]


def __getattr__(name: str):
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("vmm.network.attachment"), name)
    raise AttributeError(name)
