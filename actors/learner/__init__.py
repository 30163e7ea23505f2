"""The learner: DeepSpeed ZeRO ranks. PPO's ranks (`actor.py`, the driver's handle on them
`group.py`, the critic `critic.py`, one optimizer step `step.py`, PPO-ptx's term `ptx.py`, weights
out to the engines `sync.py`), SFT and the reward model under Ray Train (`supervised.py`, its
batches `batching.py`, epoch checkpoints `epoch_checkpoints.py`), and what both build on: the model
and its DeepSpeed engine (`engine.py`), weights out of a ZeRO model (`export.py`), sums over ranks
(`ranks.py`)."""
