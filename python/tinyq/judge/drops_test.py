"""tinyq.judge.drops: the stress set (no budget) reports and never judges, in its words too."""

import numpy as np

from tinyq.judge import drops


def compared(int8):
    fp32 = np.linspace(-1, 1, 64)
    return drops.Compared("y", fp32, int8, "output", scale=1.0)


def test_a_lost_signal_on_the_stress_set_is_reported_not_judged():
    r = drops.compare_floats(compared(np.zeros(64)), budget=None)
    assert r.drop == 1.0 and r.passed
    assert r.reason == ("drop 1 (int8 output is constant where fp32 varies: the signal is lost); "
                        "reported, not judged (stress check)")


def test_a_lost_signal_on_real_data_fails():
    r = drops.compare_floats(compared(np.zeros(64)), budget=0.01)
    assert r.drop == 1.0 and not r.passed and "not judged" not in r.reason
