"""The embedded demo: a synthetic world with a simulated labeler, the demo run (base -> SFT ->
RM -> PPO -> evaluation) and its report. Names load on first use (see
`instructray.orchestrator.lazy_face`): Ray workers import `demo.world` alone."""

from instructray.orchestrator import lazy_face

_NAMES = {
    "run_demo": "run",
    "run_eval": "evaluate",
    "evaluate_world": "evaluate",
    "write_report": "report",
}
__getattr__ = lazy_face(__name__, _NAMES)
__all__ = list(_NAMES)
