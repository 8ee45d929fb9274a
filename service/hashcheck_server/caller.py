"""Who the current call is from, as the access interceptor established it.

The interceptor (hashcheck_server.access) runs each admitted call of
hashcheck.v1.HashCheck inside a `contextvars.Context` holding its `Caller`;
the servicer reads it with `current_caller()`. A servicer used without the
interceptor sees None and answers as a server without tenants does.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from hashcheck_server.limits import TokenBucket
from hashcheck_server.tenants import Tenant

__all__ = ["Caller", "current_caller"]


@dataclass(frozen=True)
class Caller:
    """An admitted call: its tenant (None without tenants), ids and rate bucket."""

    tenant: Tenant | None
    request_id: str
    peer: str
    bucket: TokenBucket | None = None

    @property
    def tenant_name(self) -> str:
        return "" if self.tenant is None else self.tenant.name


_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "hashcheck_caller", default=None
)


def current_caller() -> Caller | None:
    return _CALLER.get()


def context_for(caller: Caller) -> contextvars.Context:
    """A context in which `current_caller()` is `caller`."""
    context = contextvars.copy_context()
    context.run(_CALLER.set, caller)
    return context
