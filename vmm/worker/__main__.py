"""`python -m vmm.worker SPEC READY_FD`: the worker process (started by vmm.worker.launch)."""
import sys

from vmm.worker.main import main

raise SystemExit(main(sys.argv[1:]))
