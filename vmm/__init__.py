"""micromachines host side: the VMM, its worker, images, network, store and CLI."""

__version__ = "0.1.0"
