import pytest

from recovla_jax.evaluation.stats import wilson


def test_wilson_known_values():
    r = wilson(8, 10)
    assert r.rate == 0.8
    assert r.ci_low == pytest.approx(0.4902, abs=1e-3) and r.ci_high == pytest.approx(0.9433, abs=1e-3)


def test_wilson_edges():
    assert wilson(0, 50).ci_low == 0.0 and wilson(0, 50).ci_high > 0.0
    assert wilson(50, 50).ci_high == 1.0 and wilson(50, 50).ci_low < 1.0
    with pytest.raises(ValueError):
        wilson(3, 0)
    with pytest.raises(ValueError):
        wilson(5, 4)
