"""The client distribution stays light: importing it pulls in nothing of the server side."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("service", "engine", "alto", "torch", "ray", "fastapi", "sqlalchemy", "megatron")


def test_client_and_cli_import_nothing_heavy() -> None:
    code = (
        "import sys, alto_client.client, alto_client.cli, alto_client.demo, alto_client.report\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert out.stdout.strip() == "", f"the client imported {out.stdout.strip()}"
