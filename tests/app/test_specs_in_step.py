"""The API's request bodies and the engine's specs describe the same fields with the same defaults.

The app may not import the engine (only the worker runs it), so the two are written apart; this
test is what keeps them one source: a field or default changed on one side fails here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from app import schemas
from app.runs import forms
from engine import specs
from engine.discovery.dashboard import DashboardSpec
from engine.methods.concepts import ConceptSpec
from engine.prompts import MELBO_POSITIONS
from engine.refine import specs as refine_specs

# (API body, engine spec, fields only the API has, fields the app fills in before validating)
PAIRS = [
    # twin: a second run; beta: DCT's, rank: adapters' (the same body asks for dct and adapter runs,
    # checked by DctSpec and AdapterSpec)
    (schemas.MelboCreate, specs.MelboSpec, {"priority", "twin", "beta", "rank"}, set()),
    (schemas.ChainCreate, specs.ChainSpec, {"priority", "vector_id"}, {"prompts", "source", "model"}),
    (schemas.CalibrationCreate, specs.CalibrateSpec, {"priority"}, set()),
    (schemas.SamplesCreate, specs.SampleSpec, {"priority", "vector_ids"}, {"model"}),
    # The vector (in the path) gives the block, model and prompts; the server, the completions' length.
    (
        schemas.ScaleSweepCreate,
        specs.ScaleSweepSpec,
        {"priority"},
        {"prompts", "block", "model", "max_new_tokens"},
    ),
    # Refining a vector: the vector gives the block, model, prompts and its run's objective settings.
    (
        schemas.RPathCreate,
        refine_specs.RPathSpec,
        {"priority"},
        {"prompts", "source", "model", "target", "radius", "p", "q", "lr", "positions", "loss", "normalize"},
    ),
    # probes: added to the vector's run's prompts; held_out: required here (the engine refuses none).
    (
        schemas.GeneralizeCreate,
        refine_specs.GeneralizeSpec,
        {"priority", "probes"},
        {
            "prompts",
            "held_out",
            "source",
            "model",
            "target",
            "radius",
            "p",
            "q",
            "lr",
            "positions",
            "loss",
            "normalize",
            "max_new_tokens",
        },
    ),
    # The detector (by id) gives the pattern and its kind; the gallery, the completions' length.
    (
        schemas.SearchCreate,
        refine_specs.SearchSpec,
        {"priority", "detector_id"},
        {"prompts", "block", "model", "pattern", "detector", "max_new_tokens"},
    ),
    (schemas.ConceptCreate, ConceptSpec, {"priority"}, set()),
    # The vector gives the block and its run's prompts (its run's target, the downstream block); the
    # server's settings, the corpus's size.
    (
        schemas.DashboardCreate,
        DashboardSpec,
        {"priority"},
        {
            "block",
            "downstream",
            "prompts",
            "tokens",
            "contexts",
            "window",
            "bins",
            "nearest",
            "search",
            "bank",
            "max_new_tokens",
        },
    ),
]
MISSING = object()


def engine_defaults(spec: type[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = MISSING
    return out


def api_defaults(body: type[BaseModel]) -> dict[str, Any]:
    return {
        name: MISSING if info.default is PydanticUndefined else info.default
        for name, info in body.model_fields.items()
    }


def same(a: Any, b: Any) -> bool:
    """Equal as JSON would carry them: a list is a tuple, 2 is 2.0, but True is not 1."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


@pytest.mark.parametrize(
    ("body", "spec", "api_only", "filled"), PAIRS, ids=lambda x: getattr(x, "__name__", "")
)
def test_fields_and_defaults_agree(
    body: type[BaseModel], spec: type[Any], api_only: set[str], filled: set[str]
) -> None:
    api, engine = api_defaults(body), engine_defaults(spec)
    assert set(api) - set(engine) == api_only, f"{body.__name__} has fields {spec.__name__} lacks"
    assert set(engine) - set(api) <= filled, f"{spec.__name__} has fields {body.__name__} lacks"
    for name, default in api.items():
        if name in api_only or name in filled:
            continue
        theirs = engine[name]
        if default is None:
            # None in the API means "left out, so the engine's default applies": it needs one.
            assert theirs is not MISSING, f"{body.__name__}.{name} is optional but the engine requires it"
        elif default is MISSING:
            assert theirs is MISSING, f"{body.__name__}.{name} is required but the engine has a default"
        else:
            assert same(default, theirs), (
                f"{body.__name__}.{name}: API default {default!r}, engine {theirs!r}"
            )


def test_the_run_form_opens_with_the_same_defaults() -> None:
    values = forms.run_defaults(model="m")
    for name in forms.RUN_FIELDS:
        default = schemas.MelboCreate.model_fields[name].default
        if name == "model":
            continue
        shown = values[name]
        if name == "twin":  # on in the form for every new run; an API client asks for it
            assert shown is True and default is False
            continue
        if default is None:
            assert shown == "", name  # blank: "auto"
        elif isinstance(default, bool):
            assert shown is default, name
        else:
            assert float(shown) == default if isinstance(default, float) else shown == str(default), name


def test_the_scale_sweep_cap_is_the_engines() -> None:
    assert schemas.MAX_SCALES == specs.MAX_SCALES


def test_melbos_default_positions_are_the_engines() -> None:
    assert schemas.MELBO_POSITIONS == MELBO_POSITIONS == specs.MelboSpec(prompts=("Hi",)).positions


def test_the_refinement_caps_are_the_engines() -> None:
    assert schemas.MAX_MULTIPLES == refine_specs.MAX_MULTIPLES
    assert schemas.MAX_MULTIPLE == refine_specs.MAX_MULTIPLE
    assert schemas.MAX_SEARCH_BUDGET == refine_specs.MAX_BUDGET
    assert schemas.MAX_POPULATION == refine_specs.MAX_POPULATION


def test_a_changed_default_would_be_caught() -> None:
    """The comparison itself can fail (so the test above is not vacuous)."""
    changed = dataclasses.make_dataclass("Changed", [("n_vectors", int, dataclasses.field(default=9))])
    assert engine_defaults(changed)["n_vectors"] != api_defaults(schemas.MelboCreate)["n_vectors"]
    assert not same(8, 9) and same(2.0, 2.0) and same([1.0], (1.0,))


# Answers that are files or event streams, not JSON documents.
NOT_JSON = {
    "/api/jobs/{job_id}/events",
    "/api/conversations/{conversation_id}/stream",
    "/api/conversations/{conversation_id}/export",
    "/api/export/{table}.{fmt}",
    "/api/vectors/{vector_id}/export",
    "/api/vectors/{vector_id}/peft",  # a zip
    "/api/runs/{run_id}/export",
}


def test_every_json_answer_has_a_declared_shape(settings: Any) -> None:
    """`/docs` shows what each call answers: no JSON route returns an undeclared dict."""
    from app.main import create_app

    spec = create_app(settings).openapi()
    bare = []
    for path, operations in spec["paths"].items():
        if not path.startswith("/api/") or path in NOT_JSON:
            continue
        for method, operation in operations.items():
            ok = next(v for code, v in operation["responses"].items() if code.startswith("2"))
            schema = ok.get("content", {}).get("application/json", {}).get("schema", {})
            if not (schema.get("$ref") or schema.get("items", {}).get("$ref")):
                bare.append(f"{method.upper()} {path}")
    assert bare == []


def test_the_help_texts_state_the_engines_real_defaults() -> None:
    """What the form's help says a default is, is what the engine does when the field is left empty."""
    from engine.methods import dct, default_radius, melbo

    fields = schemas.MelboCreate.model_fields
    steps = fields["steps"].description or ""
    assert f"default {melbo.FAST_STEPS} in fast mode" in steps
    assert f"{melbo.DEFAULT_STEPS} in reference mode" in steps
    assert f"dct: iterations, default {dct.ITERATIONS}" in steps
    radius = fields["radius"].description or ""
    assert f"default {default_radius.MULTIPLE:g} × the share of the residual norm" in radius
    assert f"default {specs.AdapterSpec.__dataclass_fields__['rank'].default}" in (
        fields["rank"].description or ""
    )
    assert f"{fields['batch_size'].default}" == str(specs.MelboSpec.batch_size)


def test_the_apps_working_scale_rules_are_the_engines() -> None:
    """The pages' ladder and the rule scoring's query follows are the probe's and the engine's."""
    from app.runs import scales
    from engine.refine import working_scale

    assert scales.LADDER == working_scale.LADDER
    assert scales.SCORED_UP_TO == working_scale.SCORED_UP_TO
    for working in (None, *working_scale.LADDER, 0.6, 5.0):
        assert scales.scored_scale(working) == working_scale.scored_scale(working)
