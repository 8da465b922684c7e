"""The `mm` command line: thin typer commands, imported lazily so start-up stays fast."""
