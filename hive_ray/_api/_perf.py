"""The ``/perf`` endpoints' work: the analyzer's report, its HTML page, and regressions.

The analyzer actor belongs to the orchestrator (``orchestrator.analyzer()``
starts it on first use), so these reads go through the same ``call`` as the
rest of the API. The baseline is the file ``hive perf baseline save`` writes
(``<state_dir>/perf-baseline.json``): the API compares against what the
operator saved, not against a baseline held only in the analyzer's memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from hive_ray._api._problems import ProblemError
from hive_ray._perf_cli import BASELINE_FILE
from hive_ray._settings import Settings

logger = logging.getLogger("hive_ray.api")

#: How long ``/metrics`` reuses a regression count: a comparison runs a statistical test
#: per operation in the analyzer, too much to repeat for every scrape.
REGRESSION_COUNT_SECONDS = 15.0
#: Bound on the analyzer's answer inside a scrape.
ANALYZER_TIMEOUT_SECONDS = 5.0


class PerfReader:
    """Reads the analyzer for one replica; ``call`` is the orchestrator call of :class:`ApiService`."""

    def __init__(self, settings: Settings, call: Any) -> None:
        self.baseline_path = Path(settings.state_dir) / BASELINE_FILE
        self._call = call
        self._tracing = settings.tracing
        self._counted: tuple[float, int | None] | None = None  # (monotonic time, count)

    async def _analyzer(self) -> Any:
        return await self._call("analyzer")

    async def report(self) -> dict[str, Any]:
        """The analyzer's report (``PerformanceReport.to_dict()`` plus its own ``analyzer`` figures)."""
        analyzer = await self._analyzer()
        return await analyzer.report.remote(None)

    async def report_html(self) -> str:
        """The self-contained HTML report (charts inline, no external resources)."""
        from hive_ray._analyzer import PerformanceReport, render_html

        data = await self.report()
        # Rendering builds SVG charts for every operation: keep it off the event loop.
        return await asyncio.to_thread(render_html, PerformanceReport.from_dict(data))

    async def regressions(self) -> dict[str, Any]:
        """The current window compared with the saved baseline.

        Raises:
            ProblemError: 404 when no baseline was saved, 409 when the file is unreadable.
        """
        from hive_ray._analyzer import BaselineError, load_baseline

        if not self.baseline_path.is_file():
            raise ProblemError(404, "no performance baseline has been saved; run `hive perf baseline "
                               "save` under a representative workload first", slug="no-baseline")
        try:
            baseline = await asyncio.to_thread(load_baseline, self.baseline_path)
        except BaselineError as error:
            raise ProblemError(409, f"{error.message}; save a new one with `hive perf baseline save`",
                               slug="baseline-unreadable") from None
        analyzer = await self._analyzer()
        results = await analyzer.compare.remote(baseline.to_dict())
        regressed = [result for result in results if result["regressed"]]
        return {
            "baseline_created_at": baseline.created_at,
            "compared": len(results),
            "regressed": bool(regressed),
            "regressions": regressed,
            "results": results,
        }

    async def regression_count(self) -> int | None:
        """Operations regressed against the saved baseline, for ``/metrics``.

        None (the gauge is left out) when tracing is off here, when no baseline was
        saved, or when the analyzer cannot answer. A scrape never starts the
        analyzer: with tracing on, the orchestrator runs it already.
        """
        if not self._tracing or not self.baseline_path.is_file():
            return None
        now = time.monotonic()
        if self._counted is not None and now - self._counted[0] < REGRESSION_COUNT_SECONDS:
            return self._counted[1]
        try:
            compared = await asyncio.wait_for(self.regressions(), ANALYZER_TIMEOUT_SECONDS)
            count: int | None = len(compared["regressions"])
        except Exception as error:  # noqa: BLE001 - a scrape reports what it can
            logger.info("metrics: no regression count (%s)", type(error).__name__)
            count = None
        self._counted = (now, count)
        return count
