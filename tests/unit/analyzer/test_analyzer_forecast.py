"""Trend fitting and threshold-crossing forecasts."""

import random

import pytest

from hive_ray._analyzer import fit_trend, forecast_crossing
from hive_ray._analyzer._forecast import t_critical_95


def test_fit_recovers_an_exact_line():
    trend = fit_trend([(float(x), 3.0 + 2.0 * x) for x in range(10)])
    assert trend.slope == pytest.approx(2.0)
    assert trend.intercept == pytest.approx(3.0)
    assert trend.r_squared == pytest.approx(1.0)
    assert trend.residual_standard_error == pytest.approx(0.0, abs=1e-9)
    assert trend.rising()


def test_fit_matches_textbook_standard_errors():
    points = [(1.0, 1.0), (2.0, 3.0), (3.0, 2.0), (4.0, 5.0), (5.0, 4.0)]
    trend = fit_trend(points)
    assert trend.slope == pytest.approx(0.8)
    assert trend.intercept == pytest.approx(0.6)
    # Residual sum of squares 3.6 over 3 degrees of freedom; spreads of x and y are 10.
    assert trend.residual_standard_error == pytest.approx((3.6 / 3) ** 0.5)
    assert trend.slope_standard_error == pytest.approx((3.6 / 3 / 10) ** 0.5)
    assert trend.r_squared == pytest.approx(1 - 3.6 / 10)


def test_planted_trend_is_found():
    rng = random.Random(11)
    slope, intercept = 2.0, 100.0  # value units per second
    points = [(float(x), intercept + slope * x + rng.gauss(0, 5)) for x in range(0, 600, 10)]
    threshold = intercept + slope * 3600  # crossed at t = 3600 s
    forecast = forecast_crossing(points, threshold)
    true_eta = 3600 - 590
    assert forecast.eta_seconds == pytest.approx(true_eta, rel=0.10)
    assert forecast.eta_low_seconds <= forecast.eta_seconds <= forecast.eta_high_seconds
    assert forecast.eta_low_seconds == pytest.approx(true_eta, rel=0.2)
    assert forecast.slope_per_hour == pytest.approx(slope * 3600, rel=0.05)
    assert forecast.confidence == 0.95


def test_flat_series_gives_no_crossing():
    rng = random.Random(12)
    forecast = forecast_crossing([(float(x), 100 + rng.gauss(0, 5)) for x in range(60)], 200.0)
    assert forecast.eta_seconds is None
    assert forecast.eta_low_seconds is None and forecast.eta_high_seconds is None


def test_falling_series_gives_no_crossing():
    forecast = forecast_crossing([(float(x), 100.0 - x) for x in range(20)], 200.0)
    assert forecast.eta_seconds is None
    assert forecast.slope_per_hour == pytest.approx(-3600.0)


def test_already_past_the_threshold_means_now():
    forecast = forecast_crossing([(float(x), 10.0 * x) for x in range(10)], 50.0)
    assert forecast.eta_seconds == forecast.eta_low_seconds == forecast.eta_high_seconds == 0.0


def test_t_table_is_conservative_between_rows():
    assert t_critical_95(1) == pytest.approx(12.706)
    assert t_critical_95(35) == t_critical_95(30)
    assert t_critical_95(1000) == pytest.approx(1.96)


def test_fit_errors_say_how_to_fix():
    with pytest.raises(ValueError, match="at least 3 points, got 2; observe longer"):
        fit_trend([(0.0, 1.0), (1.0, 2.0)])
    with pytest.raises(ValueError, match="at least two distinct times"):
        fit_trend([(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)])
