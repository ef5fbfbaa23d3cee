"""Result rows: one flat JSON object a line, appended to a file or printed."""
from __future__ import annotations

import json
import os
from typing import Any


def append_row(row: dict[str, Any], path: str | None) -> None:
    """Appends `row` as one JSON line to `path` (folders made as needed), or prints it."""
    line = json.dumps(row, default=str)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")
    else:
        print(line, flush=True)
