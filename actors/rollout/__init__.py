"""The rollout engines: one vLLM engine per actor (`actor.py`), the code that runs inside vLLM's
workers for the weight sync (`vllm_extension.py`), LoRA adapters served by an engine
(`adapter.py`)."""

# vLLM's own variable: the placement-group bundles of a tensor-parallel engine's workers, one
# GPU each. The run's Placement sets it in the engine actor's environment (orchestrator/cluster.py,
# Slot.options); here, where the driver can read it without importing vLLM or torch.
BUNDLES_ENV = "VLLM_RAY_BUNDLE_INDICES"
