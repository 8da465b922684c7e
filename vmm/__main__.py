"""`python -m vmm` is `mm`."""
from vmm.cli.main import main

raise SystemExit(main())
