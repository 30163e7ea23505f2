"""The scorers: the reward model (or Python reward functions) and the frozen reference policy's
log-probs (`scorers.py`), reward functions found by name or file and called with the prompts'
columns (`reward_functions.py`), rule rewards and the checks of what they return
(`rule_rewards.py`)."""
