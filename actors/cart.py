"""``cart``: a shopping cart per user, a virtual agent whose state outlives its host.

Address one cart by its key (``hive.agent("cart", "user-42")``); the first
message activates it, its contents are saved at the end of every message that
changed them, and a cart whose host was killed comes back with them on its
next message. Messages are dicts with an ``op``:

- ``{"op": "add", "item": "apple", "quantity": 2}``: adds (quantity defaults to 1)
- ``{"op": "remove", "item": "apple"}``: removes the item
- ``{"op": "view"}``: the contents, ``{"items": {...}, "count": n}``
- ``{"op": "checkout"}``: empties the cart and answers with what it held
"""

from __future__ import annotations

from typing import Any

from hive_ray._task import Task
from hive_ray._virtual import VirtualAgent

#: Most distinct items one cart holds.
MAX_ITEMS = 1000


class CartAgent(VirtualAgent):
    agent_type = "cart"
    idle_seconds = 300.0

    def handle(self, task: Task) -> dict[str, Any]:
        message = task.payload
        if not isinstance(message, dict) or message.get("op") not in _OPS:
            raise ValueError(f"a cart message is a dict with op one of {', '.join(_OPS)}, got {message!r}")
        items: dict[str, int] = self.state.setdefault("items", {})
        op = message["op"]
        if op == "add":
            item, quantity = message.get("item"), message.get("quantity", 1)
            if not isinstance(item, str) or not item:
                raise ValueError(f"add needs an item name (a non-empty string), got {item!r}")
            if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 1:
                raise ValueError(f"add needs a quantity of at least 1, got {quantity!r}")
            if item not in items and len(items) >= MAX_ITEMS:
                raise ValueError(f"a cart holds at most {MAX_ITEMS} distinct items")
            items[item] = items.get(item, 0) + quantity
        elif op == "remove":
            items.pop(str(message.get("item")), None)
        elif op == "checkout":
            bought = dict(items)
            items.clear()
            self.state["orders"] = self.state.get("orders", 0) + 1
            return {"key": self.key, "bought": bought, "count": sum(bought.values())}
        return {"key": self.key, "items": dict(items), "count": sum(items.values())}


_OPS = ("add", "remove", "view", "checkout")
