"""Shared fixtures of the engine tests: a small corpus and a private data cache."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("ALTO_CACHE_DIR", str(path))
    return path


@pytest.fixture
def text_files(tmp_path: Path) -> list[str]:
    """Three small .txt documents and a JSONL file of four."""
    files = []
    for i in range(3):
        p = tmp_path / f"doc{i}.txt"
        p.write_text(f"document {i}\n" + "def f(x):\n    return x * 2\n" * (20 + i))
        files.append(str(p))
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text(
        "\n".join(f'{{"text": "line {i} of json text with words"}}' for i in range(4)) + "\n"
    )
    files.append(str(jsonl))
    return files
