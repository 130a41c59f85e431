"""Writing files so that a crash at any moment leaves either the old file or the new one, never
half of one: the data goes to `<path>.tmp` first and is renamed over the path."""
from __future__ import annotations

import json
import os


def write_json_atomic(path: str, data, **dump_kwargs) -> None:
    """json.dump(data) to `path` through `<path>.tmp` and an atomic rename; `dump_kwargs` go to
    json.dump (indent, sort_keys, default...)."""
    with open(path + ".tmp", "w") as handle:
        json.dump(data, handle, **dump_kwargs)
    os.replace(path + ".tmp", path)
