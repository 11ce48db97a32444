"""Schemathesis hooks for ``test_api_fuzz.py`` (loaded through ``SCHEMATHESIS_HOOKS``).

One check replaces schemathesis' ``positive_data_acceptance``: it is the same
check, except that a 422 passes when every error in it has one of two codes,
each a rule that JSON Schema cannot state and the API's description does:

* ``fields_disagree``: fields valid one by one but not together (a backoff's
  initial delay above its maximum, ``autoscale.min_agents`` above
  ``max_agents``, an ``Idempotency-Key`` header that differs from the body's
  key); JSON Schema cannot compare two values;
* ``int_from_float``: ``2.0`` where an integer is expected; to JSON Schema
  2.0 *is* an integer, and hive-ray refuses it on purpose (a float silently
  read as a count once started 22,605 agents).

Any other refusal of valid data still fails.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

#: Error codes of rules that the API's description states and JSON Schema cannot.
UNSTATABLE = {"fields_disagree", "int_from_float"}


@schemathesis.check
def positive_data_acceptance_except_fields_that_disagree(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code == 422:
        try:
            errors = json.loads(response.content).get("errors") or []
        except ValueError:
            errors = []
        if errors and all(error.get("code") in UNSTATABLE for error in errors):
            return None
    return positive_data_acceptance(ctx, response, case)
