"""Regression detection: error rates on seeded data, the rank test, baselines on disk."""

import json
import math
import pickle
import random

import pytest

from hive_ray._analyzer import (
    Baseline,
    BaselineError,
    OperationBaseline,
    build_baseline,
    compare,
    compare_to_baseline,
    load_baseline,
    percentile,
    save_baseline,
)
from hive_ray._analyzer._regression import mann_whitney_greater
from hive_ray._errors import HiveError

_MEDIAN_SECONDS = 0.020
_SIGMA = 0.5


def _sample(rng: random.Random, count: int = 500, scale: float = 1.0) -> list[float]:
    return [scale * rng.lognormvariate(math.log(_MEDIAN_SECONDS), _SIGMA) for _ in range(count)]


def test_same_distribution_rarely_regresses():
    rng = random.Random(20240601)
    regressed = sum(compare(_sample(rng), _sample(rng)).regressed for _ in range(100))
    assert regressed <= 5


def test_thirty_percent_slower_is_almost_always_caught():
    rng = random.Random(20240602)
    regressed = sum(
        compare(_sample(rng), _sample(rng, scale=1.3), operation="op").regressed for _ in range(100)
    )
    assert regressed >= 95


def test_a_significant_but_tiny_shift_is_not_material():
    rng = random.Random(5)
    baseline = _sample(rng, 2000)
    current = [value * 1.03 for value in _sample(rng, 2000)]
    result = compare(baseline, current, operation="op")
    assert not result.material and not result.regressed


def test_faster_is_not_a_regression():
    rng = random.Random(6)
    result = compare(_sample(rng), _sample(rng, scale=0.7))
    assert result.p_value > 0.5 and not result.regressed


def test_mann_whitney_matches_a_hand_computed_case():
    # baseline ranks 1,2,3 and current ranks 4,5,6: U = 9, the largest possible.
    p_value = mann_whitney_greater([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    z = (9 - 4.5 - 0.5) / math.sqrt(3 * 3 * 7 / 12)
    assert p_value == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    assert mann_whitney_greater([1.0, 1.0], [1.0, 1.0]) == 0.5


def test_ties_are_ranked_by_their_average():
    tied = mann_whitney_greater([1.0, 2.0, 2.0, 3.0], [2.0, 3.0, 3.0, 4.0])
    assert 0.0 < tied < 0.5


def test_result_fields():
    result = compare([0.010] * 50 + [0.020] * 50, [0.030] * 100, operation="HTTP GET /")
    assert result.operation == "HTTP GET /"
    assert result.baseline_p95 == 0.020
    assert result.current_p95 == 0.030
    assert result.ratio == pytest.approx(1.5)
    assert result.significant and result.material and result.regressed


def test_compare_needs_samples():
    with pytest.raises(ValueError, match="needs at least 2 samples on each side"):
        compare([], [1.0, 2.0])


def test_percentile_interpolates():
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([], 0.5) == 0.0


def test_baseline_file_round_trip(tmp_path):
    rng = random.Random(8)
    baseline = build_baseline(
        {"b": _sample(rng, 100), "a": _sample(rng, 50)}, counts={"a": 9000}, clock=lambda: 1.7e9
    )
    path = tmp_path / "baseline.json"
    save_baseline(path, baseline)
    loaded = load_baseline(path)
    assert loaded == baseline
    assert loaded.created_at == 1.7e9
    assert [each.operation for each in loaded.operations] == ["a", "b"]
    assert loaded.get("a").count == 9000
    assert loaded.get("b").count == 100
    assert loaded.get("missing") is None
    assert not (tmp_path / "baseline.json.tmp").exists()


def test_compare_to_baseline_skips_unknown_operations():
    rng = random.Random(9)
    baseline = Baseline(
        created_at=0.0,
        operations=(OperationBaseline.from_samples("op", _sample(rng)),),
    )
    results = compare_to_baseline(baseline, {"op": _sample(rng, scale=2.0), "new": [1.0, 2.0]})
    assert [result.operation for result in results] == ["op"]
    assert results[0].regressed


def test_missing_baseline_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere.json"
    with pytest.raises(BaselineError, match=f"no baseline file at '{path}'") as caught:
        load_baseline(path)
    assert caught.value.details == {"path": str(path)}


@pytest.mark.parametrize("content", ["{not json", json.dumps({"created_at": 1.0})])
def test_corrupt_baseline_file_names_the_path(tmp_path, content):
    path = tmp_path / "corrupt.json"
    path.write_text(content)
    with pytest.raises(BaselineError, match="corrupt.json' is corrupt.*record a new baseline"):
        load_baseline(path)


def test_baseline_error_survives_pickle():
    error = BaselineError("no baseline file at 'x'", path="x")
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is BaselineError and str(restored) == str(error)
    assert restored.details == {"path": "x"}
    assert isinstance(restored, HiveError)
