"""``python -m engine.run``: invalid specs and bad data fail before any worker starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.data.indexed import write_indexed
from engine.run import EXIT_INVALID, EXIT_OK, main

REPO = Path(__file__).resolve().parents[2]


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


INVALID = """
model: {hidden_size: 64, num_attention_heads: 3, num_experts: 3}
parallel: {tensor: 2, expert: 2}
resources: {workers: 3}
training: {global_batch_size: 10, micro_batch_size: 4}
"""


def test_every_problem_is_printed_and_nothing_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_main(capsys, write(tmp_path, INVALID), "--out", str(tmp_path / "run"))
    assert code == EXIT_INVALID
    for field in (
        "model.hidden_size",
        "model.num_attention_heads",
        "model.num_experts",
        "resources.workers",
        "training.micro_batch_size",
    ):
        assert field in out
    assert not (tmp_path / "run").exists()


def test_unknown_optimizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_main(capsys, write(tmp_path, "optimizer: {name: lion}\n"))
    assert code == EXIT_INVALID
    assert "optimizer" in out and "'lion'" in out and "'alto', 'adamw', 'e'" in out


def test_missing_data_path_found_by_preflight(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cache_dir: Path
) -> None:
    spec = write(
        tmp_path,
        "data: {source: indexed, path: /nonexistent/prefix, "
        "tokenizer: {kind: external, vocab_size: 100}}\n",
    )
    code, out = run_main(capsys, spec, "--check")
    assert code == EXIT_INVALID
    assert "data.path" in out and "/nonexistent/prefix.bin does not exist" in out
    files = write(tmp_path, "data: {source: files, files: [/nope.txt]}\n", "f.yaml")
    code, out = run_main(capsys, files, "--check")
    assert code == EXIT_INVALID and "data.files.0" in out and "'/nope.txt' does not exist" in out


def test_corrupt_idx_is_reported_not_crashed_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cache_dir: Path
) -> None:
    write_indexed(tmp_path / "d", [np.arange(50), np.arange(30)], vocab_size=257)
    idx = tmp_path / "d.idx"
    idx.write_bytes(idx.read_bytes()[:-12])
    spec = write(tmp_path, f"data: {{source: indexed, path: {tmp_path / 'd'}}}\n")
    code, out = run_main(capsys, spec, "--check")
    assert code == EXIT_INVALID
    assert f"{idx} is not a valid megatron index" in out and "truncated or corrupt" in out


def test_env_spec_and_overrides(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cache_dir: Path,
    text_files: list[str],
) -> None:
    spec = {"name": "from-env", "data": {"source": "files", "files": text_files}}
    monkeypatch.setenv("ALTO_TEST_SPEC", json.dumps(spec))
    code, out = run_main(capsys, "env:ALTO_TEST_SPEC", "--check", "--steps", "3")
    assert code == EXIT_OK and out.startswith("ok: from-env:")
    code, out = run_main(capsys, "env:ALTO_NOT_SET", "--check")
    assert code == EXIT_INVALID and "'ALTO_NOT_SET' is not set" in out
    code, out = run_main(
        capsys, "env:ALTO_TEST_SPEC", "--check", "--set", "training.micro_batch_size=3"
    )
    assert code == EXIT_INVALID and "training.micro_batch_size" in out


def test_engine_switches_optimizers_by_the_shared_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cache_dir: Path
) -> None:
    """`--set optimizer.name=adamw` on an ALTO spec: ALTO's alpha goes, adamw's fields
    apply (the same rule as `alto submit --set`, JobSpec.with_overrides)."""
    spec = write(tmp_path, "data: {max_bytes: 20000}\noptimizer: {name: alto, alpha: 0.3}\n")
    code, out = run_main(
        capsys, spec, "--check", "--set", "optimizer.name=adamw", "--set", "optimizer.beta2=0.95"
    )
    assert code == EXIT_OK, out
    code, out = run_main(capsys, spec, "--check", "--set", "optimizer.alpha")
    assert code == EXIT_INVALID and "FIELD=VALUE" in out


def test_module_entry_point_runs(tmp_path: Path) -> None:
    """The exact command the service launches, as a subprocess (invalid spec: no Ray)."""
    proc = subprocess.run(
        [sys.executable, "-m", "engine.run", write(tmp_path, INVALID)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_INVALID
    assert "resources.workers" in proc.stderr
