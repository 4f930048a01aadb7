"""ACC, forgetting and BWT (SPEC §8) against hand-computed matrices."""
from __future__ import annotations

import pytest

from hopelm.eval.continual import cl_metrics


def test_metrics_by_hand():
    A = [[0.9, 0.0, 0.0],
         [0.5, 0.8, 0.0],
         [0.3, 0.6, 0.7]]
    m = cl_metrics(A)
    assert m["ACC"] == pytest.approx((0.3 + 0.6 + 0.7) / 3)
    assert m["F"] == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6)) / 2)     # 0.4
    assert m["BWT"] == pytest.approx(((0.3 - 0.9) + (0.6 - 0.8)) / 2)   # -0.4
    assert m["diag"] == [0.9, 0.8, 0.7] and m["final"] == [0.3, 0.6, 0.7]


def test_metrics_peak_after_learning_and_positive_transfer():
    A = [[0.5, 0.0, 0.0, 0.0],
         [0.9, 0.4, 0.0, 0.0],
         [0.7, 0.8, 0.6, 0.0],
         [0.6, 0.7, 0.9, 1.0]]
    m = cl_metrics(A)
    assert m["ACC"] == pytest.approx((0.6 + 0.7 + 0.9 + 1.0) / 4)
    # max over t < T of a_{t,i}: task 0 peaked at t=1 (0.9), task 1 at t=2 (0.8), task 2 at t=2 (0.6)
    assert m["F"] == pytest.approx(((0.9 - 0.6) + (0.8 - 0.7) + (0.6 - 0.9)) / 3)
    assert m["BWT"] == pytest.approx(((0.6 - 0.5) + (0.7 - 0.4) + (0.9 - 0.6)) / 3)
    assert cl_metrics([[0.7]]) == {"ACC": 0.7, "F": 0.0, "BWT": 0.0, "diag": [0.7], "final": [0.7]}
