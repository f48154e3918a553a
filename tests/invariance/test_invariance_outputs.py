"""invariance.outputs: the paper's sweeps."""
from __future__ import annotations

from convlens.invariance.outputs import paper_sweeps


def test_paper_sweeps_scale_the_shifts_to_the_input_size():
    s = paper_sweeps(224)
    assert s["translate"] == [-60.0, -50.0, -40.0, -30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    assert s["scale"][0] == 0.6 and s["scale"][-1] == 1.8 and len(s["scale"]) == 13
    assert s["rotate"] == [float(a) for a in range(0, 361, 15)]
    assert paper_sweeps(112)["translate"] == [-30.0, -25.0, -20.0, -15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0, 20.0,
                                              25.0, 30.0]
