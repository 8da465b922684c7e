"""Printing data for humans or as JSON (`--json`), one helper for every command."""
from __future__ import annotations

import json
import sys
from typing import Any


def emit_json(data: Any, stream=None) -> None:
    stream = stream or sys.stdout
    json.dump(data, stream, indent=2, sort_keys=True, default=str)
    stream.write("\n")


def emit_table(rows: list[dict[str, Any]], columns: list[str], stream=None) -> None:
    """A plain aligned table like `docker ps` (no colour, stable for scripts)."""
    stream = stream or sys.stdout
    cells = [[c.upper() for c in columns]] + [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        stream.write("   ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")
