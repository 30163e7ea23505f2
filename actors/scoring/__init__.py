"""The scorers: the reward model (or Python reward functions) and the frozen reference policy's
log-probs (`scorers.py`), rule rewards and the loading of a named function (`rule_rewards.py`)."""
