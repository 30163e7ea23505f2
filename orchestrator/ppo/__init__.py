"""PPO (InstructGPT step 3): the trainer's experience loop, the actors of a run, its checkpoints,
the weight-sync check and the bench. Names load on first use (see
`instructray.orchestrator.lazy_face`)."""

from instructray.orchestrator import lazy_face

_NAMES = {
    "PPOTrainer": "trainer",
    "RestartsExhausted": "trainer",
    "Roles": "roles",
    "run_ppo": "run",
    "run_bench": "bench",
    "Checkpoints": "checkpoints",
    "CheckpointError": "checkpoints",
    "NonFiniteError": "numerics",
    "WeightSyncError": "sync_check",
}
__getattr__ = lazy_face(__name__, _NAMES)
__all__ = list(_NAMES)
