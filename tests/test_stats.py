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


def test_mcnemar_exact_reads_only_the_states_one_method_recovers():
    import numpy as np

    from recovla_jax.evaluation.paired import mcnemar_exact

    a = np.array([1] * 10 + [0] * 2 + [1] * 30 + [0] * 8, bool)  # 10 only a, 2 only b, 30 both, 8 neither
    b = np.array([0] * 10 + [1] * 2 + [1] * 30 + [0] * 8, bool)
    r = mcnemar_exact(a, b)
    assert (r["n"], r["only_a"], r["only_b"]) == (50, 10, 2)
    assert r["difference"] == pytest.approx(8 / 50)
    assert r["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 4096)  # two-sided binomial(12, 1/2) tail at 2
    assert mcnemar_exact(b, a)["p_value"] == pytest.approx(r["p_value"]) and mcnemar_exact(b, a)["difference"] < 0
    assert mcnemar_exact(a, a)["p_value"] == 1.0  # no discordant state: no evidence either way
    with pytest.raises(ValueError, match="one length"):
        mcnemar_exact(a, b[:-1])


def test_cells_pair_only_when_they_ran_the_same_episodes():
    import numpy as np

    from recovla_jax.evaluation.paired import (cells_agree, decode_outcomes, disagreement_reason, encode_outcomes,
                                               paired_outcomes)

    ok = np.array([True, False, True, True])
    assert encode_outcomes(ok) == "1011" and (decode_outcomes("1011") == ok).all()
    with pytest.raises(ValueError, match="'0'/'1'"):
        decode_outcomes("10x1")
    a = {**wilson(3, 4).as_dict(), "per_state": {"success": "1011", "episodes": "f1"}}
    b = {**wilson(3, 4).as_dict(), "per_state": {"success": "1110", "episodes": "f1"}}
    other = {**wilson(3, 4).as_dict(), "per_state": {"success": "1011", "episodes": "f2"}}
    legacy = wilson(3, 4).as_dict()
    pair = paired_outcomes(a, b)
    assert pair is not None and pair[1].tolist() == [True, True, True, False]
    assert paired_outcomes(a, other) is None and paired_outcomes(a, legacy) is None
    assert not cells_agree(a, b)  # same count, other states
    assert "other outcomes" in disagreement_reason(a, b)
    assert not cells_agree(a, other)  # same count, but provably other episodes
    assert "other episodes" in disagreement_reason(a, other)
    assert cells_agree(a, legacy)  # one side predates per-state outcomes: counts decide
    assert "predates" in disagreement_reason(a, legacy)
    unfingerprinted = {**wilson(3, 4).as_dict(), "per_state": {"success": "1011", "episodes": ""}}
    assert paired_outcomes(unfingerprinted, unfingerprinted) is None  # no fingerprint: nothing proves the same episodes


def test_a_rewritten_results_file_keeps_the_earlier_one(tmp_path):
    import os

    from recovla_jax.utils.run_dirs import keep_previous, replace_keeping_previous

    path = tmp_path / "results.json"
    assert keep_previous(path) is None
    path.write_text('{"wall_seconds": 7984}')
    os.utime(path, (1_700_000_000, 1_700_000_000))
    first = keep_previous(path)
    assert first is not None and first.read_text() == '{"wall_seconds": 7984}' and not path.exists()
    path.write_text("{}")
    os.utime(path, (1_700_000_000, 1_700_000_000))  # same stamp: a second name, nothing overwritten
    second = keep_previous(path)
    assert second != first and first.exists() and second.read_text() == "{}"
    assert sorted([second.name, first.name]) == [first.name, second.name]  # names sort in the order they were kept

    kept = replace_keeping_previous(path, '{"new": 1}')
    assert kept is None and path.read_text() == '{"new": 1}'
    os.utime(path, (1_700_000_100, 1_700_000_100))
    kept = replace_keeping_previous(path, '{"newer": 2}')
    assert kept is not None and kept.read_text() == '{"new": 1}' and path.read_text() == '{"newer": 2}'
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file became results.json
