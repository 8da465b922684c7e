"""`python -m vmm` is `mm`."""
from vmm.cli.main import entry

entry()
