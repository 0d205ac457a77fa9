"""Shared pytest setup for the whole suite; keep it minimal.

tests/ contains directories named like our packages (tests/alto, tests/service). When
pytest puts tests/ on sys.path (it does for this conftest and for any test module
directly in tests/), ``import alto`` would find tests/alto as a namespace package
before the editable install's finder gets a chance. Putting the project root first
makes the real, regular packages win.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)
