import pytest

from instructray.kernels import AdaptiveKLController, FixedKLController


def test_adaptive_kl_hand_computed():
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    # kl 7: error = 7/6 - 1 = 1/6; mult = 1 + (1/6) * 600 / 10000 = 1.01
    ctl.update(current_kl=7.0, n_steps=600)
    assert abs(ctl.value - 0.1 * 1.01) < 1e-15


def test_adaptive_kl_moves_toward_target_with_clipped_error():
    above = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    above.update(current_kl=100.0, n_steps=256)  # error clipped to +0.2: 1 + 0.2 * 256 / 10000
    assert abs(above.value - 0.1 * 1.00512) < 1e-15
    below = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    below.update(current_kl=0.0, n_steps=256)  # error -1 clipped to -0.2: 1 - 0.2 * 256 / 10000
    assert abs(below.value - 0.1 * 0.99488) < 1e-15
    on_target = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    on_target.update(current_kl=6.0, n_steps=256)
    assert on_target.value == 0.1


def test_fixed_kl_never_moves():
    ctl = FixedKLController(0.05)
    for kl in (0.0, 1.0, 1e6):
        ctl.update(current_kl=kl, n_steps=512)
    assert ctl.value == 0.05


def test_kl_controller_state_round_trip():
    ctl = AdaptiveKLController(0.2, target=1.0, horizon=100)
    ctl.update(3.0, 10)
    restored = AdaptiveKLController(0.2, target=1.0, horizon=100)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value != 0.2
    fixed = FixedKLController(0.0)
    fixed.load_state_dict(FixedKLController(0.3).state_dict())
    assert fixed.value == 0.3


def test_adaptive_kl_rejects_bad_target():
    with pytest.raises(ValueError, match="target=0"):
        AdaptiveKLController(0.1, target=0, horizon=10)
