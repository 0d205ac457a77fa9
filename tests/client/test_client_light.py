"""The client distribution stays light: importing it pulls in nothing of the server side."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("service", "engine", "alto", "torch", "ray", "fastapi", "sqlalchemy", "megatron")


def test_client_and_cli_import_nothing_heavy() -> None:
    # with the service installed, the CLI loads its command module (service.cli, the
    # `alto.commands` entry point), which itself imports nothing of the server
    code = (
        "import sys, alto_client.client, alto_client.cli, alto_client.report\n"
        "names = {m for m in sys.modules if m not in ('service', 'service.cli')}\n"
        f"heavy = sorted({{m.split('.')[0] for m in names}} & set({HEAVY!r}))\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert out.stdout.strip() == "", f"the client imported {out.stdout.strip()}"


def test_the_client_package_never_imports_the_service_or_the_engine() -> None:
    """The arrows run one way: service and engine import alto_client, never the reverse."""
    import ast
    from pathlib import Path

    import alto_client

    root = Path(alto_client.__file__).parent
    bad = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] in HEAVY]
    assert not bad, bad
