"""Many rows of one table written by one statement: their columns sent as arrays.

A bulk batch inserts hundreds of transactions and updates hundreds of lines. As
an executemany (pipelined), every row has its own Bind and Execute: the worker
builds, dumps and reads back each one (about 40 µs of CPU per row), and
PostgreSQL runs each as a statement. Here each column goes as one array in
binary (`%b`, dumped in C), PostgreSQL unnests them into rows, and the statement
text does not depend on the number of rows, so psycopg prepares it on each
connection. In one process, alternating the two batch by batch, a bulk
reversal's CPU (the worker's and PostgreSQL's together) fell by 16%; a reversal
alone costs the same (PostgreSQL plans the join each time, the worker saves as
much).

Two users:
- the journal inserts its waiting transactions with `insert`;
- then, at every flush, the ORM's UPDATEs of lines, wallets, gift cards and
  events (the rows a reversal changes several of, and a bulk batch's events) are
  sent here, one statement per table and set of changed columns, and the objects
  are marked as saved; the ORM flushes the rest as usual.

Only plain columns go this way: uuid, integer, numeric, string, boolean,
timestamp, and JSON holding plain JSON values, written as the ORM writes them
(None is SQL NULL in a column that says `none_as_null`, JSON's null in any
other). An object with any other change (a primary key, a SQL expression or a
sentinel as a value) is left to the ORM whole. The events came last: their
UPDATEs, one per event with its JSON results, were most of what the ORM itself
still wrote at a bulk batch's flush; as one statement, a bulk reversal's CPU
fell by about 6%, the worker's 5% and PostgreSQL's 7% (in one process, six
pairs taking turns).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import Column, Table, inspect
from sqlalchemy import types as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstanceState, Mapper, Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.sql.elements import ClauseElement

from worker.models import Event, GiftCard, Line, Wallet

_PG = postgresql.dialect()  # type: ignore[no-untyped-call] # SQLAlchemy's dialects are untyped
_PLAIN_TYPES = (sa.Uuid, sa.Integer, sa.Numeric, sa.String, sa.Boolean, sa.DateTime, sa.JSON)
_JSON_VALUES = (dict, list, str, float, bool)  # JSON's own types; int apart (_plain_json)

# The tables whose rows a ledger operation (or a bulk batch) updates several at a time.
UPDATED_TOGETHER: tuple[type[Any], ...] = (Line, Wallet, GiftCard, Event)


def _quote(name: str) -> str:
    return _PG.identifier_preparer.quote(name)


def _array(column: Column[Any]) -> str:
    # Without length or scale: a cast to varchar(16) would cut a longer string
    # silently, where storing it in the column refuses it, as the ORM's flush does.
    if isinstance(column.type, sa.String):
        return "%b::text[]"
    if isinstance(column.type, sa.Numeric):
        return "%b::numeric[]"
    return f"%b::{column.type.compile(dialect=_PG)}[]"


@cache
def insert_statement(table: Table, names: tuple[str, ...]) -> str:
    """INSERT of rows given as one array per column of `names`, in that order."""
    columns = [table.c[name] for name in names]
    return (
        f"INSERT INTO {_quote(table.name)} ({', '.join(_quote(c.name) for c in columns)}) "  # noqa: S608 - names from the models, quoted; the values are parameters
        f"SELECT * FROM unnest({', '.join(_array(c) for c in columns)})"
    )


def insert(connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert `rows` (dicts with the same keys, in the same order) in one statement."""
    if not rows:
        return
    names = tuple(rows[0])
    connection.exec_driver_sql(
        insert_statement(table, names), tuple([row[name] for row in rows] for name in names)
    )


@cache
def update_statement(table: Table, keys: tuple[str, ...], changed: tuple[str, ...]) -> str:
    """UPDATE of rows found by `keys`, setting `changed`: one array per column, keys first."""
    columns = [table.c[name] for name in (*keys, *changed)]
    given = ", ".join(_quote(c.name) for c in columns)
    sets = ", ".join(f"{_quote(name)} = given.{_quote(name)}" for name in changed)
    match = " AND ".join(f"target.{_quote(name)} = given.{_quote(name)}" for name in keys)
    return (
        f"UPDATE {_quote(table.name)} AS target SET {sets} "  # noqa: S608 - names from the models, quoted; the values are parameters
        f"FROM unnest({', '.join(_array(c) for c in columns)}) AS given({given}) "
        f"WHERE {match}"
    )


class _Plain:
    """What a mapped class can have updated together: its table, key and plain columns."""

    def __init__(self, mapper: Mapper[Any]) -> None:
        self.table: Table = mapper.local_table  # type: ignore[assignment] # a plain table, not a join
        self.keys = tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key)
        plain = {
            prop.key
            for prop in mapper.column_attrs
            if len(prop.columns) == 1 and isinstance(prop.columns[0].type, _PLAIN_TYPES)
        }
        # Keys are what rows are found by, never what is set.
        self.settable = frozenset(plain - set(self.keys))
        # Attribute key → column name (the same in this project's models, not in general).
        self.column = {prop.key: prop.columns[0].name for prop in mapper.column_attrs}
        self.key_columns = tuple(self.column[key] for key in self.keys)
        # JSON attributes, and whether None is SQL NULL in each (else JSON's null).
        self.json: dict[str, bool] = {}
        for prop in mapper.column_attrs:
            kind = prop.columns[0].type
            if len(prop.columns) == 1 and isinstance(kind, sa.JSON):
                self.json[prop.key] = kind.none_as_null

    def column_values(self, key: str, members: Sequence[InstanceState[Any]]) -> list[Any]:
        """The members' values of one attribute, as psycopg sends them in its array."""
        values = [state.dict[key] for state in members]
        if key not in self.json:
            return values
        none_as_null = self.json[key]
        return [None if v is None and none_as_null else Jsonb(v) for v in values]


_PLAIN: dict[type[Any], _Plain] = {}


def _plain(cls: type[Any]) -> _Plain:
    if cls not in _PLAIN:
        _PLAIN[cls] = _Plain(inspect(cls))
    return _PLAIN[cls]


def _changed(state: InstanceState[Any], plain: _Plain) -> tuple[str, ...] | None:
    """The object's changed attributes if all can be updated together, else None."""
    changed = tuple(sorted(state.committed_state))
    if not changed or not plain.settable.issuperset(changed):
        return None
    if any(isinstance(state.dict[key], ClauseElement) for key in changed):
        return None
    if any(not _plain_json(state.dict[key]) for key in changed if key in plain.json):
        return None  # JSON.NULL, null() and the like: the ORM knows what they mean
    return changed


def _plain_json(value: Any) -> bool:
    # An int exactly: SQLAlchemy's sentinels (JSON.NULL) are ints too.
    return value is None or type(value) is int or isinstance(value, _JSON_VALUES)


def update(connection: Connection, states: Iterable[InstanceState[Any]]) -> None:
    """Write the changes of these persistent objects, one statement per table and set
    of changed columns where possible, and mark what was written as saved."""
    groups: dict[tuple[type[Any], tuple[str, ...]], list[InstanceState[Any]]] = {}
    for state in states:
        plain = _plain(state.class_)
        changed = _changed(state, plain)
        if changed is not None:
            groups.setdefault((state.class_, changed), []).append(state)
    # In a fixed order, as the ORM's flush: tables by name, rows by primary key.
    for (cls, changed), members in sorted(
        groups.items(), key=lambda group: (_plain(group[0][0]).table.name, group[0][1])
    ):
        plain = _plain(cls)
        members.sort(key=lambda state: tuple(state.dict[key] for key in plain.keys))
        columns = tuple(plain.column[key] for key in changed)
        params = tuple(plain.column_values(key, members) for key in (*plain.keys, *changed))
        statement = update_statement(plain.table, plain.key_columns, columns)
        result = connection.exec_driver_sql(statement, params)
        if result.rowcount != len(members):
            # As the ORM's own flush says it: a row was deleted or its key changed.
            raise StaleDataError(
                f"UPDATE statement on table '{plain.table.name}' expected to update "
                f"{len(members)} row(s); {result.rowcount} were matched."
            )
        for state in members:
            obj = state.obj()
            for key in changed:
                # Saved: the ORM's flush now finds nothing to write for this object.
                set_committed_value(obj, key, state.dict[key])


def update_dirty(session: Session) -> None:
    """Before the ORM's flush: the changes of the session's objects of UPDATED_TOGETHER."""
    states = [inspect(obj) for obj in session.dirty if isinstance(obj, UPDATED_TOGETHER)]
    if states:
        update(session.connection(), states)
