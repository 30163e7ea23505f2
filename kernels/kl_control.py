"""KL coefficient controllers for the per-token KL penalty (Ziegler et al. 2019, section 2.2)."""

from __future__ import annotations

from typing import Any


class FixedKLController:
    """A KL coefficient that never changes."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Keep the coefficient; the signature matches AdaptiveKLController."""

    def state_dict(self) -> dict[str, Any]:
        """The coefficient, for checkpoints."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the coefficient saved by state_dict."""
        self.value = float(state["value"])


class AdaptiveKLController:
    """Steers the KL coefficient so the measured KL approaches target over about horizon samples."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target=}, {horizon=}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Scale the coefficient by 1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon."""
        # The clip bounds how far one noisy KL measurement can move the coefficient.
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        """The current coefficient, for checkpoints (target and horizon come from the config)."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the coefficient saved by state_dict."""
        self.value = float(state["value"])
