"""Schemathesis hooks for ``test_api_fuzz.py`` (loaded through ``SCHEMATHESIS_HOOKS``).

One check replaces schemathesis' ``positive_data_acceptance``: it is the same
check, except that a 422 whose every error has the code ``fields_disagree``
passes. Those are fields valid one by one but not together (a backoff's
initial delay above its maximum, ``autoscale.min_agents`` above ``max_agents``,
an ``Idempotency-Key`` header that differs from the body's key): JSON Schema
cannot compare two values, so the document states these rules in the fields'
descriptions and the problem names the fields. Any other refusal of valid data
still fails.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance


@schemathesis.check
def positive_data_acceptance_except_fields_that_disagree(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code == 422:
        try:
            errors = json.loads(response.content).get("errors") or []
        except ValueError:
            errors = []
        if errors and all(error.get("code") == "fields_disagree" for error in errors):
            return None
    return positive_data_acceptance(ctx, response, case)
