"""The SR fit's stop rule (training/fit_stop.py): windows of whole epochs, agreement as the PSNR of the
window's mean squared error, and the stop decision against hand-computed values."""
import math

import pytest
import torch

from training.fit_stop import AgreementStop, mse_psnr, window_iterations


def test_window_is_whole_epochs():
    assert window_iterations(14, 100) == 112
    assert window_iterations(12, 100) == 108
    assert window_iterations(200, 100) == 200
    assert window_iterations(2, 1) == 2
    assert window_iterations(0, 5) == 5  # no views: one iteration per epoch


def test_mse_psnr_known_values():
    assert mse_psnr(0.01) == pytest.approx(20.0)
    assert mse_psnr(1e-4) == pytest.approx(40.0)
    assert mse_psnr(0.0) == float("inf")


def pair(mse: float):
    """A (render, target) pair whose mean squared error is exactly mse (a constant offset)."""
    target = torch.full((3, 4, 5), 0.25, dtype=torch.float64)
    return target + math.sqrt(mse), target


def test_stops_when_a_window_gains_less_than_the_threshold():
    rule = AgreementStop(num_views=2, min_gain_db=1.0, window=3)  # window: 2 epochs of 2 views = 4
    assert rule.window == 4
    # window means: 0.01 (20 dB), 0.005 (+3.01 dB: go on), 0.0045 (+0.458 dB: stop)
    mses = [0.012, 0.008, 0.011, 0.009] + [0.004, 0.006, 0.005, 0.005] + [0.0045] * 4
    decisions = [rule.update(*pair(m)) for m in mses]
    assert decisions == [False] * 11 + [True]
    assert rule.agreement == pytest.approx([20.0, 10 * math.log10(200), 10 * math.log10(1 / 0.0045)])
    assert rule.last_gain_db == pytest.approx(10 * math.log10(0.005 / 0.0045))


def test_keeps_going_while_windows_gain_enough_and_clamps_renders():
    rule = AgreementStop(num_views=1, min_gain_db=0.5, window=2)
    # each window halves the error: +3.01 dB per window, never below the threshold
    decisions = [rule.update(*pair(0.1 / 2 ** (i // 2))) for i in range(10)]
    assert not any(decisions) and len(rule.agreement) == 5
    # a render outside [0, 1] is scored as displayed (clamped): 1.5 vs 1.0 -> error 0, as 1.0 vs 1.0
    rule = AgreementStop(num_views=1, min_gain_db=0.5, window=1)
    rule.update(torch.full((3, 2, 2), 1.5), torch.full((3, 2, 2), 0.9))
    assert rule.agreement[0] == pytest.approx(mse_psnr(0.01))


def test_threshold_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        AgreementStop(num_views=3, min_gain_db=0.0)
