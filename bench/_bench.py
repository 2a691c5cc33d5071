"""What every benchmark shares: the project on the import path, progress on stderr, the JSON result line.

Benchmarks run as scripts (``python bench/NAME.py``), so Python puts ``bench/``
first on the import path; importing this module adds the project root once, here,
so a script imports the project's packages (and ``tests.support``) like any module.
Its name sorts before every other import, so it is always imported first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries the figures and the JSON result)."""
    print(message, file=sys.stderr, flush=True)


def emit_result(result: dict) -> None:
    """The benchmark's last line: one JSON object with every figure."""
    print(json.dumps(result), flush=True)
