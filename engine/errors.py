"""Errors a user can cause in the engine: each names the spec field at fault."""

from __future__ import annotations

from alto_client.spec import SpecError, SpecProblem


class DataError(SpecError):
    """The data a spec points at is missing or malformed (found by the engine, not the schema)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__([SpecProblem(field, message)], "job data")
