"""Cython hot paths (vCPU run loop, bus lookup, virtqueue walking); GIL released, no Python objects inside."""
