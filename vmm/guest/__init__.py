"""Host side of what runs inside the guest: the initramfs that delivers mm-init into
any image (initramfs.py, cpio.py), the per-VM boot config (bootconfig.py), SSH keys
(ssh.py) and the client of the exec agent's wire protocol (protocol.py,
agent_client.py; the protocol itself is documented in guest/PROTOCOL.md)."""
