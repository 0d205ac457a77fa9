"""Overrides of spec fields from command lines (``--set FIELD=VALUE``) and code, by one
rule for every entry point."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from alto_client.spec.problems import SpecError, SpecProblem

if TYPE_CHECKING:
    from alto_client.spec.job import JobSpec


def apply_overrides(spec: JobSpec, overrides: dict[str, Any]) -> JobSpec:
    """`spec` with dotted-path fields replaced (``{"training.steps": 20}``), re-validated.

    The one override rule of the CLI (``alto submit --set``), the engine
    (``python -m engine.run --set``), the demo and the benchmarks:

    - a section given whole (``{"optimizer": {...}}``) replaces that section;
    - ``optimizer.name`` naming another optimizer switches to it: the section's other
      fields go back to the new optimizer's defaults (AdamW has no ``alpha``), then the
      call's other ``optimizer.*`` overrides apply, whatever their order;
    - a new ``training.steps`` clamps ``warmup_steps`` and ``lr_decay_steps`` to it
      unless those are overridden too;
    - an unknown section or field is a SpecError naming it.
    """
    data = spec.model_dump(mode="python")
    items = list(overrides.items())
    new_name = overrides.get("optimizer.name")
    if new_name is not None and new_name != data["optimizer"]["name"]:
        data["optimizer"] = {"name": new_name}
        items = [(k, v) for k, v in items if k != "optimizer.name"]
    for dotted, value in items:
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise SpecError([SpecProblem(dotted, "no such section in the job spec")])
            node = node[part]
        if leaf not in node and not (node is data["optimizer"] and parents == ["optimizer"]):
            raise SpecError([SpecProblem(dotted, "no such field in the job spec")])
        node[leaf] = value
    if "training.steps" in overrides and "training.warmup_steps" not in overrides:
        t = data["training"]
        t["warmup_steps"] = min(t["warmup_steps"], max(0, t["steps"] - 1))
        if t.get("lr_decay_steps") is not None and "training.lr_decay_steps" not in overrides:
            t["lr_decay_steps"] = min(t["lr_decay_steps"], t["steps"])
    return type(spec).from_dict(data, "job spec with overrides")


def parse_override(item: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` from a command line (``--set training.steps=20``): the value is
    read as a YAML scalar or flow collection (numbers, booleans, lists, ``{...}``), a
    plain string otherwise. Shared by every command line that takes ``--set``."""
    field, eq, raw = item.partition("=")
    if not eq or not field.strip():
        raise SpecError([SpecProblem(item, "expected FIELD=VALUE like training.steps=20")], "--set")
    raw = raw.strip()
    if not raw:
        return field.strip(), ""
    try:
        import yaml
    except ImportError:  # the light client without its cli extra: JSON values only
        try:
            return field.strip(), json.loads(raw)
        except json.JSONDecodeError:
            return field.strip(), raw
    try:
        return field.strip(), yaml.safe_load(raw)
    except yaml.YAMLError:
        return field.strip(), raw


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Every ``--set`` of a command line, in order (a later one wins)."""
    return dict(parse_override(item) for item in items or [])
