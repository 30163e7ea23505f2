"""The driver's layers import one way: config/ -> data/, output/ -> actors/ -> cluster,
model_specs, model_check -> sampler, ppo/, supervised, preflight -> pipeline, jobs -> cli,
doctor -> demo/. Inside actors/, a role's folder (learner/, rollout/, scoring/) imports no other
role's: what two roles share lies in actors/ itself. Every import counts, also one inside a function
(a lazy import is still an edge a reader must follow)."""

from __future__ import annotations

from import_graph import graph

ORCH = "instructray.orchestrator"
LAYERS = {
    "instructray": 0,
    f"{ORCH}.config": 0,
    f"{ORCH}.data": 1,
    f"{ORCH}.output": 1,
    f"{ORCH}.console": 1,
    f"{ORCH}.labeling": 1,  # the labeling service: its store and HTTP API
    f"{ORCH}.labeling.commands": 5,  # `instructray label ...`: reads data files
    f"{ORCH}.labeling.round": 2,  # a pipeline's round: logs metrics (output)
    "instructray.actors": 2,
    f"{ORCH}.cluster": 3,
    f"{ORCH}.model_specs": 3,
    f"{ORCH}.model_check": 3,
    f"{ORCH}.preflight": 4,
    f"{ORCH}.sampler": 4,
    f"{ORCH}.ppo": 4,
    f"{ORCH}.supervised": 4,
    f"{ORCH}.pipeline": 5,
    f"{ORCH}.jobs": 5,  # submit runs the pre-flight
    f"{ORCH}.cli": 6,
    f"{ORCH}.doctor": 6,
    f"{ORCH}.demo": 7,
}
ROLES = ("learner", "rollout", "scoring")
# Named exceptions, each with its reason.
ALLOWED = {
    # The `tiny://world` recipe trains its tokenizer on the demo world's text: moving the import
    # would change what `instructray sft --model.policy=tiny://world` builds.
    ("instructray.actors.tiny_models", f"{ORCH}.demo.world"),
}


def _unit(module: str) -> str:
    """The layer a module belongs to: its longest prefix in LAYERS."""
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    if module == ORCH:  # the package itself: lazy_face only
        return f"{ORCH}.config"
    raise AssertionError(f"{module} is in no layer; add it to LAYERS")


def _driver_and_actors() -> dict[str, set[str]]:
    return {
        me: {t for t in targets if not t.startswith("instructray.kernels")}
        for me, targets in graph().items()
        if not me.startswith("instructray.kernels")
    }


def test_imports_go_down_the_layers_only():
    wrong = [
        f"{me} imports {target}"
        for me, targets in sorted(_driver_and_actors().items())
        for target in sorted(targets)
        if (me, target) not in ALLOWED
        and _unit(target) != _unit(me)
        and LAYERS[_unit(target)] >= LAYERS[_unit(me)]
    ]
    assert not wrong, "\n".join(wrong)


def test_actors_import_only_the_config_and_the_run_outputs():
    seen = {
        (me, t)
        for me, targets in _driver_and_actors().items()
        if me.startswith("instructray.actors")
        for t in targets
        if t.startswith(ORCH)
    }
    outside = {
        (me, t)
        for me, t in seen
        if _unit(t) not in (f"{ORCH}.config", f"{ORCH}.output") and (me, t) not in ALLOWED
    }
    assert not outside, outside
    assert any(t.startswith(f"{ORCH}.output") for _, t in seen)  # the test sees imports


def _role(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "actors" and parts[2] in ROLES else None


def test_a_role_imports_no_other_role():
    edges = graph()
    crossing = [
        f"{me} imports {t}"
        for me, targets in sorted(edges.items())
        for t in sorted(targets)
        if _role(me) and _role(t) and _role(me) != _role(t)
    ]
    assert not crossing, "\n".join(crossing)
    # every role has code and the driver reaches each (the test sees the folders)
    assert {_role(m) for m in edges} >= set(ROLES)
    assert {_role(t) for ts in edges.values() for t in ts} >= set(ROLES)
