"""The job spec itself: its sections, what it derives from them, and reading one from
JSON or YAML."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from alto_client.spec.base import BYTE_VOCAB_SIZE, StrictModel
from alto_client.spec.optimizers import AltoSpec, ESpec, OptimizerSpec, alto_paper_defaults
from alto_client.spec.problems import SpecError, SpecProblem, problems_from_validation_error
from alto_client.spec.rules import cross_field_problems
from alto_client.spec.sections import (
    DataSpec,
    ModelSpec,
    ParallelSpec,
    ReportSpec,
    ResourcesSpec,
    TrainingSpec,
)


class JobSpec(StrictModel):
    """A training job: model, data, parallel layout, resources, schedule, optimizer."""

    name: str = Field(default="job", min_length=1, max_length=200)
    tags: list[str] = Field(default_factory=list)
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    parallel: ParallelSpec = Field(default_factory=ParallelSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    optimizer: OptimizerSpec = Field(default_factory=AltoSpec)
    report: ReportSpec | None = None

    # ---- derived quantities the engine and service both need

    @property
    def data_parallel_size(self) -> int:
        """Workers left over after tensor and pipeline parallelism."""
        return self.resources.workers // (self.parallel.tensor * self.parallel.pipeline)

    @property
    def grad_accumulation_steps(self) -> int:
        """Micro batches each data-parallel rank runs per optimizer step."""
        return self.training.global_batch_size // (
            self.training.micro_batch_size * self.data_parallel_size
        )

    @property
    def sequence_parallel(self) -> bool:
        """Sequence parallelism is on by default with TP (MoE with TP > 1 requires it)."""
        if self.parallel.sequence_parallel is not None:
            return self.parallel.sequence_parallel
        return self.parallel.tensor > 1

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary (megatron pads it further for TP)."""
        tok = self.data.tokenizer
        if tok.kind == "byte":
            return BYTE_VOCAB_SIZE
        assert tok.vocab_size is not None  # guaranteed by validation
        return tok.vocab_size

    @property
    def peak_lr(self) -> float:
        """The optimizer's own ``lr`` if given (trust-ratio optimizers such as ALTO take
        larger ones than AdamW), else ``training.lr``."""
        return self.optimizer.lr if self.optimizer.lr is not None else self.training.lr

    @property
    def final_lr(self) -> float:
        """``training.min_lr`` scaled like the peak, so the schedule keeps its shape."""
        return self.training.min_lr * self.peak_lr / self.training.lr

    @property
    def tokens_per_step(self) -> int:
        return self.training.global_batch_size * self.model.seq_length

    # ---- cross-field validation

    @model_validator(mode="wrap")
    @classmethod
    def _cross_field(cls, data: Any, handler: Any) -> JobSpec:
        spec: JobSpec = handler(data)
        problems = cross_field_problems(spec)
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        spec._fill_optimizer_defaults()
        return spec

    def _fill_optimizer_defaults(self) -> None:
        opt = self.optimizer
        if isinstance(opt, AltoSpec | ESpec) and (opt.alpha is None or opt.beta1 is None):
            alpha, beta1 = alto_paper_defaults(self.training.global_batch_size)
            update = {}
            if opt.alpha is None:
                update["alpha"] = alpha
            if opt.beta1 is None:
                update["beta1"] = beta1
            object.__setattr__(self, "optimizer", opt.model_copy(update=update))

    # ---- loading

    @classmethod
    def from_dict(cls, data: Any, source: str = "job spec") -> JobSpec:
        """Validate a parsed mapping; raise SpecError listing every problem."""
        if not isinstance(data, dict):
            raise SpecError(
                [SpecProblem("", f"must be a mapping of sections, got {type(data).__name__}")],
                source,
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(problems_from_validation_error(exc), source) from None

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> JobSpec:
        """Load from JSON text or a .json file."""
        text, source = _read_text(text_or_path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(
                [
                    SpecProblem(
                        "", f"not valid JSON: {exc.msg} at line {exc.lineno} col {exc.colno}"
                    )
                ],
                source,
            ) from None
        return cls.from_dict(data, source)

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> JobSpec:
        """Load from YAML text or a .yaml/.yml file (needs PyYAML: the ``cli`` extra)."""
        text, source = _read_text(text_or_path)
        try:
            import yaml
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise SpecError(
                [SpecProblem("", "reading YAML needs PyYAML: pip install 'alto-client[cli]'")],
                source,
            ) from None
        try:
            data = yaml.load(text, Loader=_SpecLoader)
        except yaml.YAMLError as exc:
            raise SpecError([SpecProblem("", f"not valid YAML: {exc}")], source) from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> JobSpec:
        """Load a spec file, choosing JSON or YAML by its extension."""
        if str(path).endswith(".json"):
            return cls.from_json(Path(path))
        return cls.from_yaml(Path(path))

    def with_overrides(self, overrides: dict[str, Any]) -> JobSpec:
        """A copy with dotted-path fields replaced, re-validated: see
        `alto_client.spec.overrides.apply_overrides` for the one rule."""
        from alto_client.spec.overrides import apply_overrides

        return apply_overrides(self, overrides)


def _read_text(text_or_path: str | Path) -> tuple[str, str]:
    """A Path, or a one-line string naming a spec file, is read; anything else is the text."""
    if isinstance(text_or_path, Path):
        path = text_or_path
    elif (
        "\n" not in text_or_path
        and text_or_path.endswith((".yaml", ".yml", ".json"))
        and not any(mark in text_or_path for mark in (": ", "{"))  # one-line YAML/JSON text
    ):
        path = Path(text_or_path)
    else:
        return text_or_path, "job spec"
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except OSError as exc:
        raise SpecError(
            [SpecProblem("", f"cannot read spec file {str(path)!r}: {exc.strerror}")], str(path)
        ) from None


def _make_loader() -> type:
    """A SafeLoader that also reads ``3e-4`` as a float (YAML 1.1 wants ``3.0e-4``)."""
    try:
        import yaml
    except ImportError:  # pragma: no cover

        class _NoYaml:
            pass

        return _NoYaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+][0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
            re.X,
        ),
        list("-+0123456789."),
    )
    return Loader


_SpecLoader = _make_loader()
