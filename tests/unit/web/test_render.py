"""Windowing of rendered images (PS3.3 C.11.2.1.2)."""
from __future__ import annotations

import numpy as np
import pytest

from engine.web.render import apply_window, parse_window


def test_parse_window():
    assert parse_window("40,400") == (40.0, 400.0, "LINEAR")
    assert parse_window("40, 400, sigmoid") == (40.0, 400.0, "SIGMOID")
    assert parse_window("0,1,linear-exact") == (0.0, 1.0, "LINEAR_EXACT")
    for bad in ("40", "a,b", "40,0", "40,400,cubic", "1,2,3,4", "nan,3"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_linear_matches_the_standard():
    x = np.array([-1000, 39.5 - 199.5 - 1, 40, 239, 1000], dtype=float)
    out = apply_window(x, 40, 400, "LINEAR")
    assert out[0] == 0 and out[-1] == 255
    assert abs(out[2] - ((40 - 39.5) / 399 + 0.5) * 255) < 1e-9
    assert np.all(np.diff(apply_window(np.arange(-300, 300.0), 40, 400, "LINEAR")) >= 0)


def test_linear_exact_and_sigmoid():
    assert apply_window(np.array([40.0]), 40, 400, "LINEAR_EXACT")[0] == 127.5
    assert apply_window(np.array([40.0]), 40, 400, "SIGMOID")[0] == 127.5
    assert apply_window(np.array([-160.0, 240.0]), 40, 400, "LINEAR_EXACT").tolist() == \
        [0.0, 255.0]
