"""The worker's control API: newline-delimited JSON over a Unix socket, versioned.

`protocol` defines the wire format (see PROTOCOL.md next to this file), `client` is the
typed Python client every `mm` command uses, `server` is the connection handling a
worker runs inside its event loop. Nothing here knows how a VM works.
"""
