"""Problems with a spec: each names its dotted field and says what is wrong."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from alto_client.errors import FieldError

SpecProblem = FieldError
"""One thing wrong with a spec: the project's one definition of a bad field
(``SpecProblem(field, message)``; ``.field`` and ``.message`` read it back)."""


def problems_from_validation_error(exc: ValidationError) -> list[SpecProblem]:
    """Flatten pydantic's errors into (dotted field, message) pairs for users and REST."""
    problems = []
    for err in exc.errors(include_url=False):
        # drop discriminator tags ("alto") that pydantic puts into union locations
        loc = [str(part) for part in err["loc"] if part not in ("alto", "adamw", "e")]
        msg = err["msg"]
        if err["type"] not in ("spec_invalid",) and "input" in err and err["type"] != "missing":
            msg = f"{msg} (got {err['input']!r})"
        problems.append(SpecProblem(field=".".join(loc), message=msg))
    return problems


class SpecError(ValueError):
    """A spec that cannot be read or is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[SpecProblem], source: str = "job spec") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} is invalid ({len(problems)} problem(s)):\n{lines}")


def problem(loc: tuple[str | int, ...], message: str, value: Any) -> InitErrorDetails:
    """One located problem, as pydantic reports it from a model validator."""
    return InitErrorDetails(
        type=PydanticCustomError("spec_invalid", "{message}", {"message": message}),
        loc=loc,
        input=value,
    )
