"""The PostgreSQL connection pool (``DB_POOL_MAX_SIZE``; Django's ``OPTIONS["pool"]``).

Each process keeps a pool of connections; a request borrows one at its first query and
gives it back when it ends. Two things the pool needs from the rest of the code:

* ``give_back()``: a long call (exec, ``?wait``, the service proxy) returns its connection
  while it waits on a sandbox, so a pool of N connections is never emptied by N waiting
  calls while short requests queue behind them. The next query borrows one again.
* a forked child (django-q2 forks its workers from a process that used the database)
  must not use the parent's pool: its connections' sockets are shared with the parent,
  and the pool's own threads did not survive the fork. The child forgets the inherited
  pool and makes its own at its first query.

Without a pool (SQLite, ``DB_POOL_MAX_SIZE=0``) both do nothing.
"""

from __future__ import annotations

import os

from django.db import connection, connections

#: What a forked child inherited, kept referenced and never closed: closing (or freeing)
#: a psycopg connection sends PostgreSQL a goodbye on the socket the parent still uses.
_inherited: list[object] = []


def pooled(alias: str = "default") -> bool:
    """Whether ``alias`` hands out connections from a pool."""
    return bool(connections.settings[alias].get("OPTIONS", {}).get("pool"))


def give_back() -> None:
    """Return this thread's connection to the pool until its next query.

    Not inside a transaction (``atomic``): closing there would end it; such a caller keeps
    its connection, as before.
    """
    if not pooled() or connection.in_atomic_block or connection.connection is None:
        return
    connection.close()


def _forget_inherited_pools() -> None:
    """After ``fork()``, in the child: drop the parent's pools and borrowed connections."""
    if not any(pooled(alias) for alias in connections.settings):
        return
    from django.db.backends.postgresql.base import DatabaseWrapper

    _inherited.extend(DatabaseWrapper._connection_pools.values())
    DatabaseWrapper._connection_pools.clear()
    for wrapper in connections.all(initialized_only=True):
        if wrapper.connection is not None and pooled(wrapper.alias):
            _inherited.append(wrapper.connection)
            wrapper.connection = None


_installed = False


def install() -> None:
    """Called by ``SandboxesConfig.ready``; a hook registered twice would run twice."""
    global _installed
    if not _installed:
        _installed = True
        os.register_at_fork(after_in_child=_forget_inherited_pools)
