"""Errors of the network area: every one says what went wrong and what to do."""
from __future__ import annotations

from vmm.errors import Conflict, MMError, NotFound, UsageError


class NetworkError(MMError):
    """Something in network set-up or tear-down failed."""

    hint = "run `mm network prune` to repair leftovers, or `mm --debug ...` for details"


class NetworkNotFound(NetworkError, NotFound):
    hint = "list networks with `mm network ls`"


class NetworkExists(NetworkError, Conflict):
    hint = "pick another name, or remove it with `mm network rm NAME`"


class NetworkInUse(NetworkError, Conflict):
    hint = "remove the machines attached to it first (see `mm network inspect NAME`)"


class SubnetOverlap(NetworkError, Conflict):
    hint = "choose a subnet that no host route, host address or other mm network uses (`ip route`, `mm network ls`)"


class PoolExhausted(NetworkError):
    hint = "remove machines, run `mm network prune`, or create a network with a larger subnet"


class PortInUse(NetworkError, Conflict):
    hint = "choose another host port, or stop what listens on it (`ss -ltnup`)"


class BadPortSpec(NetworkError, UsageError):
    hint = "use -p [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp], e.g. -p 8080:80 or -p 127.0.0.1:2222:22/tcp"


class BadSubnet(NetworkError, UsageError):
    hint = "give an IPv4 subnet in CIDR form no smaller than /29, e.g. 10.89.0.0/16"


class NftError(NetworkError):
    """The `nft` command failed or is missing."""

    hint = "install nftables (`apt-get install nftables`) and run as root"
