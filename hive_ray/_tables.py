"""Lists of records that read like tables: one HTML table in Jupyter, a DataFrame on request.

``hive.tasks()``, ``hive.pools()``, ``hive.agents()``, ``hive.dead_letters()``
and ``hive.restarts()`` return a :class:`RecordList`. It *is* a list (indexing,
``len``, ``==`` with a plain list, pickling all work as before); Jupyter shows
it as one table instead of a list of reprs, and :meth:`RecordList.to_pandas`
turns it into a DataFrame when pandas is installed.

The columns are chosen per record type (a record type lists them in its
``TABLE_COLUMNS``); plain dictionaries (restart events) show their keys. Every
cell is escaped, and a long list shows its first :data:`MAX_HTML_ROWS` rows,
saying how many more there are, so that a notebook never renders thousands of
rows by accident.
"""

from __future__ import annotations

import enum
import html
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, SupportsIndex, TypeVar, overload

T = TypeVar("T")

#: Rows an HTML table shows; the rest are summarized (``to_pandas()`` has them all).
MAX_HTML_ROWS = 200
#: Characters a cell shows before it is cut with an ellipsis.
MAX_CELL_CHARACTERS = 80

Column = tuple[str, Callable[[Any], Any]]


class RecordList(list[T]):
    """A list of records (models or dictionaries) that renders as one table.

    Args:
        records: the records.
        kind: what they are, plural ("tasks", "pools"): the table's caption.
        columns: ``(header, getter)`` pairs; None takes the records' own
            ``TABLE_COLUMNS``, or a dictionary's keys.
    """

    def __init__(self, records: Iterable[T] = (), kind: str = "records",
                 columns: Sequence[Column] | None = None) -> None:
        super().__init__(records)
        self.kind = kind
        self._columns = tuple(columns) if columns is not None else None

    # Slices keep the table form: hive.tasks()[:5] still renders as a table.
    @overload
    def __getitem__(self, index: SupportsIndex) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> RecordList[T]: ...
    def __getitem__(self, index: SupportsIndex | slice) -> T | RecordList[T]:
        if isinstance(index, slice):
            return RecordList(super().__getitem__(index), self.kind, self._columns)
        return super().__getitem__(index)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickles (and copies) as its records, kind and columns; getters are plain functions.
        return (RecordList, (list(self), self.kind, self._columns))

    def columns(self) -> tuple[Column, ...]:
        """The ``(header, getter)`` pairs of the table."""
        if self._columns is not None:
            return self._columns
        for record in self:
            declared = getattr(type(record), "TABLE_COLUMNS", None)
            if declared is not None:
                return tuple(declared)
            break
        keys: dict[str, None] = {}
        for record in self:
            if isinstance(record, dict):
                keys.update(dict.fromkeys(record))
        return tuple((key, Attribute(key)) for key in keys)

    def rows(self) -> list[list[Any]]:
        """The table's cells, one list per record, in column order."""
        columns = self.columns()
        return [[getter(record) for _, getter in columns] for record in self]

    def _repr_html_(self) -> str:
        columns = self.columns()
        count = len(self)
        noun = self.kind if count != 1 else self.kind.removesuffix("s")
        caption = f"{count} {noun}"
        if not count:
            return f"<table><caption>{html.escape(caption)}</caption></table>"
        head = "".join(f"<th>{html.escape(header)}</th>" for header, _ in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(value))}</td>" for value in row) + "</tr>"
            for row in self[:MAX_HTML_ROWS].rows()
        )
        more = ""
        if count > MAX_HTML_ROWS:
            more = (f"<tfoot><tr><td colspan='{len(columns)}'>… {count - MAX_HTML_ROWS} more; "
                    "to_pandas() has every row</td></tr></tfoot>")
        return (f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody>{more}</table>")

    def to_records(self) -> list[dict[str, Any]]:
        """Every field of every record as plain dictionaries (enums as their values)."""
        out = []
        for record in self:
            data = record.model_dump() if hasattr(record, "model_dump") else dict(record)  # type: ignore[call-overload]
            out.append({key: value.value if isinstance(value, enum.Enum) else value
                        for key, value in data.items()})
        return out

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` with one row per record and every field as a column.

        Raises:
            ImportError: pandas is not installed (``pip install pandas``).
        """
        try:
            import pandas
        except ImportError:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from None
        return pandas.DataFrame.from_records(self.to_records())

    to_dataframe = to_pandas


class Attribute:
    """A getter of one attribute (or dictionary key): picklable, unlike a lambda."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, record: Any) -> Any:
        if isinstance(record, dict):
            return record.get(self.name)
        return getattr(record, self.name, None)

    def __repr__(self) -> str:
        return f"Attribute({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Attribute) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, float):
        text = f"{value:.3g}"
    else:
        text = str(value)
    return text if len(text) <= MAX_CELL_CHARACTERS else text[: MAX_CELL_CHARACTERS - 1] + "…"


def clock_time(epoch_seconds: float | None) -> str:
    """A timestamp as local wall-clock time, the way a notebook reader reads it."""
    if epoch_seconds is None:
        return ""
    return time.strftime("%H:%M:%S", time.localtime(epoch_seconds))


def html_fields(title: str, rows: dict[str, Any]) -> str:
    """One record as a two-column HTML table (field, value) with a caption."""
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(key))}</th><td>{html.escape(_cell(value))}</td></tr>"
        for key, value in rows.items()
    )
    return f"<table><caption><b>{html.escape(title)}</b></caption>{body}</table>"
