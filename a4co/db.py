"""Database helpers: connection upkeep for long-running processes, and hot-path SQL that skips the
ORM's query building (row loaders, prebuilt statements, writes sent together in one round trip)."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import psycopg
from django.db import connections


def connections_close_stale() -> None:
    """Close this thread's connections that failed or outlived CONN_MAX_AGE; keep the rest open.

    Like Django's per-request `close_old_connections()`, minus the health check it re-arms (one
    extra `SELECT 1` round trip per unit of work). A connection broken by a PostgreSQL restart
    fails its next query instead, which marks it (`errors_occurred`) and this closes it before
    the next unit of work. Never touches a connection inside a transaction.
    """
    now = time.monotonic()
    for connection in connections.all(initialized_only=True):
        if connection.in_atomic_block:
            continue
        if connection.errors_occurred or (connection.close_at is not None and now >= connection.close_at):
            connection.close_if_unusable_or_obsolete()


_loaders: dict[type, tuple[tuple[str, ...], list[str], list]] = {}


def model_loader(model) -> tuple[tuple[str, ...], list[str], list]:
    """(quoted column names for a SELECT, attribute names, [(index, from_db_value)]) of `model`'s
    concrete fields, computed once per model."""
    loader = _loaders.get(model)
    if loader is None:
        fields = model._meta.concrete_fields
        loader = _loaders[model] = (
            tuple(connections["default"].ops.quote_name(f.column) for f in fields),
            [f.attname for f in fields],
            [(i, f.from_db_value) for i, f in enumerate(fields) if hasattr(f, "from_db_value")])
    return loader


def model_from_row(model, using: str, values) -> object:
    """A model instance from a row in model_loader's column order, as the ORM would build it."""
    _columns, names, converters = model_loader(model)
    values = list(values)
    for index, convert in converters:
        values[index] = convert(values[index], None, connections[using])
    return model.from_db(using, names, values)


def models_select(model, using: str, where: str, params: list, *, tail: str = "") -> list:
    """Instances of `model` for `SELECT <all its columns> FROM <its table> WHERE <where> <tail>`.

    For hot paths where building the ORM query costs more CPU than running it; `where` and
    `tail` are SQL written by the caller (parameters go in `params`, never into the text).
    """
    columns, _names, _converters = model_loader(model)
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(columns)} FROM {connection.ops.quote_name(model._meta.db_table)}"
                       f" WHERE {where} {tail}", params)
        rows = cursor.fetchall()
    return [model_from_row(model, using, row) for row in rows]


_pair_queries: dict[tuple, str] = {}


def model_pairs_select(first, second, using: str, *, on: str, where: str, params: list, tail: str = "",
                       extra: str = "") -> list[tuple]:
    """[(a `first` instance, a `second` instance, *extra values)] for
    `SELECT f.<all>, s.<all> [, <extra>] FROM <first> AS f JOIN <second> AS s ON <on> WHERE <where> <tail>`.

    The SQL text is built once per (models, on, where, tail, extra); same rules as models_select
    (`extra` is SQL too: more columns, e.g. a scalar subquery, returned after the two instances).
    """
    key = (first, second, on, where, tail, extra)
    sql = _pair_queries.get(key)
    if sql is None:
        quote = connections[using].ops.quote_name
        columns = [*(f"f.{c}" for c in model_loader(first)[0]), *(f"s.{c}" for c in model_loader(second)[0])]
        if extra:
            columns.append(extra)
        sql = _pair_queries[key] = (
            f"SELECT {', '.join(columns)} FROM {quote(first._meta.db_table)} AS f"
            f" JOIN {quote(second._meta.db_table)} AS s ON {on} WHERE {where} {tail}")
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    split = len(model_loader(first)[1])
    end = split + len(model_loader(second)[1])
    return [(model_from_row(first, using, row[:split]), model_from_row(second, using, row[split:end]), *row[end:])
            for row in rows]


def model_pair_select(first, second, using: str, *, on: str, where: str, params: list, tail: str = ""):
    """The first pair model_pairs_select finds (same arguments), or None."""
    pairs = model_pairs_select(first, second, using, on=on, where=where, params=params, tail=tail)
    return pairs[0] if pairs else None


def sql_update(obj, fields, using: str) -> tuple[str, list]:
    """`UPDATE <table> SET <fields> WHERE pk = obj.pk` with values prepared as Model.save would."""
    meta = obj._meta
    return sql_update_values(type(obj), obj.pk, {name: getattr(obj, meta.get_field(name).attname) for name in fields},
                             using)


def sql_update_values(model, pk, values: dict, using: str, *, where: str = "", where_params=()) -> tuple[str, list]:
    """`UPDATE <table> SET <values> WHERE pk = <pk> [AND <where>]`, values prepared as the ORM would."""
    connection = connections[using]
    quote, meta = connection.ops.quote_name, model._meta
    sets, params = [], []
    for name, value in values.items():
        field = meta.get_field(name)
        sets.append(f"{quote(field.column)} = %s")
        params.append(field.get_db_prep_save(value, connection))
    params.append(meta.pk.get_db_prep_save(pk, connection))
    params.extend(where_params)
    return (f"UPDATE {quote(meta.db_table)} SET {', '.join(sets)} WHERE {quote(meta.pk.column)} = %s"
            + (f" AND {where}" if where else "")), params


def sql_array(values) -> str:
    """A PostgreSQL array literal of str() of each value, quoted (any text is safe), to pass as one
    parameter and cast in the SQL: `= ANY(%s::text::uuid[])`, `unnest(%s::text::int[])`.

    Why not a list parameter: psycopg dumps a list element by element in Python, which cost more
    of a consumer's CPU (~4 %) than the statements that use them. No NULL elements."""
    return "{" + ",".join('"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def mark_saved(using: str, *instances) -> None:
    """Mark instances written by sql_insert as the ORM marks what it saved (not adding, on `using`)."""
    for instance in instances:
        instance._state.adding, instance._state.db = False, using


def sql_execute(using: str, statement: tuple[str, list]) -> int:
    """Run one statement; returns its row count."""
    with connections[using].cursor() as cursor:
        cursor.execute(*statement)
        return cursor.rowcount


def sql_insert(objs, using: str) -> tuple[str, list]:
    """A multi-row INSERT of `objs` (one model; an auto-increment key is left to the database)."""
    connection = connections[using]
    quote, meta = connection.ops.quote_name, objs[0]._meta
    fields = [f for f in meta.concrete_fields if not (f.primary_key and f.db_returning)]
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection) for obj in objs for f in fields]
    return (f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in fields)})"
            f" VALUES {', '.join([row] * len(objs))}", params)


# Stands in a statement's own WITH query names for its place among the statements that travel
# together (statements_run_together), so that the names are unique in the one statement sent and
# the same statement keeps the same text: a name unique per row (a UUID) made every text new, so
# psycopg converted it anew and PostgreSQL parsed and planned it anew every time, never prepared.
SLOT = "__slot__"


def statements_run_together(using: str, statements: list[tuple[str, list]], *, deferrable: bool = False) -> None:
    """Run data-modifying statements in one round trip: each becomes a WITH query of one statement
    (PostgreSQL runs each exactly once, to completion), the last its final statement. A statement
    may start with WITH queries of its own: name them other than w<n>, with SLOT in each name (it
    becomes the statement's place in the round trip: `stored{SLOT}` is `stored0`, `stored1`, ...;
    they are hoisted into the one WITH list). Same transaction semantics as running them one by
    one inside the caller's transaction.

    Writes queued by `statement_defer` on `using` go first, in the same statement. With
    `deferrable`, inside `writes_deferred` the statements are queued too (nothing in the
    transaction may read them back before it ends); elsewhere they run now.
    """
    connection = connections[using]
    queued = getattr(connection, "_a4co_deferred", None)
    if queued is not None:
        if deferrable:
            queued.extend(statements)
            return
        statements, queued[:] = [*queued, *statements], []
    _run_together(connection, statements)


def _run_together(connection, statements: list[tuple[str, list]]) -> None:
    # SLOT in a statement's own WITH query names becomes its place: unique here, the same every time.
    placed = [(sql.replace(SLOT, str(i)), params) for i, (sql, params) in enumerate(statements)]
    *first, (last_sql, last_params) = placed
    sql = last_sql
    if first:
        clauses = []
        for i, (statement, _params) in enumerate(first):
            # PostgreSQL takes a data-modifying WITH query only at the top level: a statement's
            # own WITH queries join the list, ahead of the statement's body.
            own, body = _with_split(statement)
            clauses.append(f"{own}, w{i} AS ({body})" if own else f"w{i} AS ({body})")
        own, body = _with_split(last_sql)
        sql = f"WITH {', '.join(clauses)}{', ' + own if own else ''} {body}"
    params = [p for _, ps in first for p in ps] + list(last_params)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _with_split(sql: str) -> tuple[str, str]:
    """("name AS (...), ...", the rest) of a statement that starts with WITH; ("", sql) otherwise.
    Parentheses inside quoted literals or identifiers do not count."""
    if not sql.startswith("WITH "):
        return "", sql
    depth, quote, end = 0, "", 5
    for index in range(5, len(sql)):
        char = sql[index]
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                end = index + 1
                following = sql[end:].lstrip()
                if not following.startswith(","):
                    return sql[5:end], following
    raise ValueError(f"a WITH statement without a body: {sql[:200]}")


def statement_defer(using: str, statement: tuple[str, list]) -> bool:
    """Queue an INSERT that nothing reads back in this transaction (an inbox or outbox row) to
    travel with the transaction's next write, inside `writes_deferred`. Returns False (queued
    nothing: run it now) outside one."""
    queued = getattr(connections[using], "_a4co_deferred", None)
    if queued is None:
        return False
    queued.append(statement)
    return True


def writes_flush(using: str) -> None:
    """Send the writes queued inside `writes_deferred` on `using` now, in one statement, so that
    what the transaction reads next sees them. Nothing to do outside one, or with none queued."""
    queued = getattr(connections[using], "_a4co_deferred", None)
    if queued:
        statements, queued[:] = list(queued), []
        _run_together(connections[using], statements)


@contextlib.contextmanager
def writes_deferred(using: str) -> Iterator[None]:
    """Inside an atomic block on `using`: queued writes (statement_defer, deferrable
    statements_run_together) go out with the next statements_run_together, the rest in one
    statement when the block ends without an exception (the queue is dropped on one).

    Why: a message handler's inbox row, its state change and its outbox row cost one round trip
    instead of three. When nothing else was sent in the transaction, that one statement runs on
    its own (atomic by itself) and the transaction costs no BEGIN/COMMIT round trips either.
    A failure of the final statement (e.g. an IntegrityError) is raised from the block's end.
    """
    connection = connections[using]
    if not connection.in_atomic_block or getattr(connection, "_a4co_deferred", None) is not None:
        raise RuntimeError(f"writes_deferred needs an atomic block on {using!r} and does not nest")
    connection._a4co_deferred = queued = []
    try:
        yield
        connection._a4co_deferred = None
        if queued:
            _run_last(connection, queued)
    finally:
        connection._a4co_deferred = None


def _run_last(connection, statements: list[tuple[str, list]]) -> None:
    raw = connection.connection
    alone = (raw is not None and not connection.needs_rollback and not connection.savepoint_ids
             and raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)
    if not alone:
        _run_together(connection, statements)
        return
    # Nothing was sent in this transaction: the one statement commits by itself, and the
    # transaction's end (COMMIT of an idle connection) is free in psycopg.
    raw.autocommit = True
    try:
        _run_together(connection, statements)
    finally:
        raw.autocommit = False
