"""What a pool's ``config`` may hold (``PoolSpec.config``): plain JSON, small, and no secrets.

The config is journaled with the pool and shown by ``GET /v1/pools``, so a key that names a
secret is refused with what to do instead. Pure: the pydantic model calls it.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: Largest pool config, as JSON: it travels to every agent host and into the journal.
MAX_CONFIG_BYTES = 16 * 1024
_SECRET_NAME = re.compile(r"(^|_)(api_?key|password|passwd|secret|token|credentials?)$", re.IGNORECASE)


def checked_config(config: dict[str, Any]) -> dict[str, Any]:
    for key in config:
        if _SECRET_NAME.search(key):
            raise ValueError(
                f"config.{key}: a pool's config is journaled and shown by the API, so secrets do not "
                f"belong in it; put the secret in an environment variable of the cluster and give its "
                f"name instead (for the llm agent: api_key_env)")
    try:
        size = len(json.dumps(config, allow_nan=False, separators=(",", ":")))
    except (TypeError, ValueError) as error:
        raise ValueError(f"config must be plain JSON (strings, numbers, booleans, null, lists, objects): "
                         f"{error}") from None
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"config is {size} bytes as JSON; at most {MAX_CONFIG_BYTES} (pass large data "
                         "in tasks, or let agents load it)")
    return config


__all__ = ["MAX_CONFIG_BYTES", "checked_config"]
