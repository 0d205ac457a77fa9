"""Bad input for the corpus fields of a spec (globs, directories, blends, BPE sample,
prep_workers): each refused with its field, the value and what is allowed; and the
service's data-root check covers every path a blend names."""

from __future__ import annotations

import pytest
from alto_client.spec import JobSpec, SpecError


def problems(data: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        JobSpec.from_dict({"data": data})
    return {p.field: p.message for p in info.value.problems}


BLEND = {
    "source": "blend",
    "blend": [{"files": ["/d/web/*.jsonl"], "weight": 0.7}, {"files": ["/d/code/"], "weight": 0.3}],
}


def test_good_corpus_specs_are_valid() -> None:
    JobSpec.from_dict({"data": BLEND})
    JobSpec.from_dict(
        {"data": {"source": "files", "files": ["/d/a/**/*.jsonl", "/d/b/", "/d/c.txt"]}}
    )
    spec = JobSpec.from_dict(
        {
            "data": {
                "source": "blend",
                "blend": [{"path": "/d/tok/web_text_document", "weight": 2}],
                "tokenizer": {"kind": "external", "vocab_size": 50257},
            }
        }
    )
    assert spec.data.blend[0].weight == 2.0
    bpe = {"source": "files", "files": ["/d/x.jsonl"], "prep_workers": 8}
    bpe["tokenizer"] = {"kind": "bpe", "vocab_size": 1000, "sample_bytes": 10_000_000}
    JobSpec.from_dict({"data": bpe})


@pytest.mark.parametrize(
    ("data", "field", "needle"),
    [
        ({"source": "files", "files": ["/d/corpus"]}, "data.files.0", "trailing '/'"),
        ({"source": "files", "files": ["/d/*.csv"]}, "data.files.0", "'/d/*.csv'"),
        ({"source": "blend"}, "data.blend", "at least one component"),
        ({"source": "blend", "blend": [{"files": ["/d/a.txt"]}]}, "data.blend.0.weight", "required"),
        (
            {"source": "blend", "blend": [{"files": ["/d/a.txt"], "weight": 0}]},
            "data.blend.0.weight",
            "greater than 0",
        ),
        (
            {"source": "blend", "blend": [{"files": ["/d/a.txt"], "weight": -1}]},
            "data.blend.0.weight",
            "greater than 0",
        ),
        (
            {"source": "blend", "blend": [{"files": ["/d/a.txt"], "weight": float("inf")}]},
            "data.blend.0.weight",
            "finite",
        ),
        ({"source": "blend", "blend": [{"weight": 1}]}, "data.blend.0", "exactly one of them"),
        (
            {"source": "blend", "blend": [{"files": ["/d/a.txt"], "path": "/d/p", "weight": 1}]},
            "data.blend.0",
            "exactly one of them",
        ),
        (
            {"source": "blend", "blend": [{"files": ["/d/a.pdf"], "weight": 1}]},
            "data.blend.0.files.0",
            "only .txt and .jsonl",
        ),
        (
            {
                "source": "blend",
                "blend": [{"files": ["/d/a.txt"], "weight": 1}, {"path": "/d/p", "weight": 1}],
            },
            "data.blend",
            "all corpora (files) or all indexed datasets (path)",
        ),
        (
            {"source": "blend", "blend": [{"path": "/d/p", "weight": 1}], "tokenizer": {"kind": "bpe", "vocab_size": 999}},
            "data.tokenizer.kind",
            "'external'",
        ),
        (
            {"source": "blend", "blend": [{"files": ["/d/a.txt"], "weight": 1}], "tokenizer": {"kind": "external", "vocab_size": 99}},
            "data.tokenizer.kind",
            "only for source 'indexed' or a blend of indexed datasets",
        ),
        ({**BLEND, "files": ["/d/a.txt"]}, "data.files", "names its data in data.blend"),
        ({**BLEND, "path": "/d/p"}, "data.path", "names its data in data.blend"),
        (
            {"source": "files", "files": ["/d/a.txt"], "blend": BLEND["blend"]},
            "data.blend",
            "only for source 'blend'",
        ),
        (
            {"source": "files", "files": ["/d/a.txt"], "tokenizer": {"kind": "byte", "sample_bytes": 10_000}},
            "data.tokenizer.sample_bytes",
            "trains nothing",
        ),
        (
            {"source": "files", "files": ["/d/a.txt"], "tokenizer": {"kind": "bpe", "vocab_size": 999, "sample_bytes": 10}},
            "data.tokenizer.sample_bytes",
            "greater than or equal to 1000",
        ),
        ({"source": "files", "files": ["/d/a.txt"], "prep_workers": 0}, "data.prep_workers", "greater than or equal to 1"),
        (
            {"source": "indexed", "path": "/d/p", "prep_workers": 4},
            "data.prep_workers",
            "pre-tokenized indexed data needs none",
        ),
        ({"source": "bucket"}, "data.source", "'files' or 'blend'"),
    ],
)  # fmt: skip
def test_bad_corpus_fields_name_field_value_and_what_is_allowed(
    data: dict, field: str, needle: str
) -> None:
    found = problems(data)
    assert field in found, found
    assert needle in found[field], found[field]


def test_service_checks_every_blend_path_against_the_roots() -> None:
    from service.validation import data_path_problems

    spec = JobSpec.from_dict(
        {
            "data": {
                "source": "blend",
                "blend": [
                    {"files": ["/d/alice/web/*.jsonl", "/d/bob/x.jsonl"], "weight": 1},
                    {"files": ["/d/alice/../bob/"], "weight": 1},
                    {"files": ["/d/*/x.jsonl"], "weight": 1},
                ],
            }
        }
    )
    errors = {tuple(e.loc): e.msg for e in data_path_problems(spec, ["/d/alice"], ["body"])}
    assert set(errors) == {
        ("body", "data", "blend", 0, "files", 1),
        ("body", "data", "blend", 1, "files", 0),
        ("body", "data", "blend", 2, "files", 0),
    }
    assert (
        "'/d/bob/x.jsonl' is outside the data roots allowed for you (/d/alice)"
        in errors[("body", "data", "blend", 0, "files", 1)]
    )
    assert "must not contain '..'" in errors[("body", "data", "blend", 1, "files", 0)]
    indexed = JobSpec.from_dict(
        {
            "data": {
                "source": "blend",
                "blend": [{"path": "/elsewhere/p", "weight": 1}],
                "tokenizer": {"kind": "byte"},
            }
        }
    )
    (error,) = data_path_problems(indexed, ["/d/alice"], ["body"])
    assert error.loc == ["body", "data", "blend", 0, "path"]
    none = data_path_problems(indexed, [], ["body"])
    assert none[0].loc == ["body", "data", "source"] and "no data roots" in none[0].msg
