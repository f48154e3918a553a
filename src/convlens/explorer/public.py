"""What ``/file/*.json`` serves: the run's JSON with this machine's absolute paths taken out.

Result and config files record absolute paths (the run folder, the data, the checkpoint, ``argv``);
served as they are, they would tell every visitor the machine's user names and folder layout. A
path inside the run becomes relative to the run (the run itself ``.``); any other absolute path
keeps only its last component, after ``…/`` (``/home/ann/data/cats/x.png`` -> ``…/x.png``), also
inside longer strings (``--data=/home/ann/data`` -> ``--data=…/data``). URLs are kept.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["public_json", "public_text"]

_ABSOLUTE_DIRS = re.compile(r"(?<![\w.~/:\\])/(?:[^\s/\"'=:,;]+/)+")


def public_text(text: str, root: Path) -> str:
    """``text`` with the absolute paths of the module docstring rewritten (``root``: the run folder)."""
    base = str(root).rstrip("/")
    if text == base:
        return "."
    text = text.replace(base + "/", "").replace(base, ".")
    return _ABSOLUTE_DIRS.sub("…/", text)


def _walk(value: Any, root: Path) -> Any:
    if isinstance(value, str):
        return public_text(value, root)
    if isinstance(value, list):
        return [_walk(v, root) for v in value]
    if isinstance(value, dict):
        return {public_text(str(k), root): _walk(v, root) for k, v in value.items()}
    return value


def public_json(path: Path, root: Path) -> bytes:
    """The JSON file ``path`` of the run ``root`` as served: parsed, rewritten, dumped again (a file
    that is not valid JSON is rewritten as text)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        return public_text(text, root).encode()
    return json.dumps(_walk(data, root), indent=1, ensure_ascii=False).encode()
