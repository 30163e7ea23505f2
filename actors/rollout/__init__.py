"""The rollout engines: one vLLM engine per actor (`actor.py`), the code that runs inside vLLM's
workers for the weight sync (`vllm_extension.py`), LoRA adapters served by an engine
(`adapter.py`)."""
