"""The Ray actors, one folder per role: `learner/` (the DeepSpeed ranks: PPO's policy and critic,
SFT and the reward model under Ray Train, weights out for the sync), `rollout/` (the vLLM engines
and the code that runs inside them), `scoring/` (the reward and reference scorers, rule rewards).
What more than one role uses lies here: the sequence layout (`sequences.py`), LoRA adapters on
disk (`lora.py`), the weight-sync protocol (`weight_sync.py`), waits with timeouts (`remote.py`),
actor logs (`logs.py`), the test-only fault hook (`faults.py`), the tiny-model builder
(`tiny_models.py`)."""

# Imported by its bare folder name (a clone's root on sys.path): that name is not ours.
if __name__ == "actors":
    from instructray import step_aside

    step_aside(__name__, __file__)
