"""The performance analyzer's pure logic: statistics, regressions, forecasts, advice, reports.

Nothing here imports Ray or OpenTelemetry; adapters feed measurements in and show
the results. Data flows in one direction::

    latencies -> LogHistogram / SlidingWindow / OperationTable   (_histogram, _window)
              -> Baseline + compare -> RegressionResult          (_regression)
              -> fit_trend / forecast_crossing -> Forecast       (_forecast)
              -> SystemProfile -> recommend -> Recommendation    (_recommend)
              -> PerformanceReport -> render_text / render_html  (_report, _svg)
"""

from hive_ray._analyzer._forecast import Forecast, Trend, fit_trend, forecast_crossing
from hive_ray._analyzer._histogram import LogHistogram
from hive_ray._analyzer._recommend import (
    PoolLoad,
    ProcessMemory,
    Recommendation,
    Slo,
    SystemProfile,
    recommend,
)
from hive_ray._analyzer._regression import (
    Baseline,
    BaselineError,
    OperationBaseline,
    RegressionResult,
    build_baseline,
    compare,
    compare_to_baseline,
    load_baseline,
    percentile,
    save_baseline,
)
from hive_ray._analyzer._report import PerformanceReport, explain_empty, render_html, render_text
from hive_ray._analyzer._window import (
    OperationStatistics,
    OperationTable,
    Reservoir,
    SeriesPoint,
    SlidingWindow,
)

__all__ = [
    "Baseline",
    "BaselineError",
    "Forecast",
    "LogHistogram",
    "OperationBaseline",
    "OperationStatistics",
    "OperationTable",
    "PerformanceReport",
    "PoolLoad",
    "ProcessMemory",
    "Recommendation",
    "RegressionResult",
    "Reservoir",
    "SeriesPoint",
    "SlidingWindow",
    "Slo",
    "SystemProfile",
    "Trend",
    "build_baseline",
    "compare",
    "compare_to_baseline",
    "explain_empty",
    "fit_trend",
    "forecast_crossing",
    "load_baseline",
    "percentile",
    "recommend",
    "render_html",
    "render_text",
    "save_baseline",
]
