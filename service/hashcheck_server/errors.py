"""The errors of the HashCheck server, as one small tree.

    HashCheckError                  base of everything raised on purpose
    ├── BadRequest                  the caller sent something wrong (INVALID_ARGUMENT)
    ├── NotReady                    no generation is loaded yet (UNAVAILABLE)
    ├── AccessRefused               not for this caller, or not now
    │   ├── Unauthenticated         no key, or an unknown one (UNAUTHENTICATED)
    │   ├── Forbidden               a disabled tenant (PERMISSION_DENIED)
    │   └── OverLimit               over rate or streams (RESOURCE_EXHAUSTED)
    ├── UnsafeListen                no tenants, a non-loopback address, no opt-out
    ├── CannotListen                an address to serve on is taken or invalid
    ├── ReceiptsUnavailable         receipts asked of a server without a signing key
    │                               (FAILED_PRECONDITION)
    ├── Unsupported                 a call this server is not set up to take: a
    │                               dispute sent to a replica (FAILED_PRECONDITION)
    ├── SigningKeyError             the signing key file cannot be made or read
    ├── ImportRejected              an import file cannot be used; nothing was committed
    │   └── MalformedInput          lines that cannot be read, each with its reason
    └── StoreError                  the data directory cannot be used
        ├── StoreFull               the disk or LMDB map is full (RESOURCE_EXHAUSTED)
        ├── StoreCorrupt            the directory is not a HashCheck store, or damaged
        ├── UnknownList             a list name that the store does not hold
        ├── UnknownTenant           a tenant name that the store does not hold
        ├── AuditFailed             a hit could not be recorded (UNAVAILABLE)
        └── ManifestNotKept         no manifest was kept for that generation

Messages are whole sentences that say what to do next. They never contain a
hash that a client sent, nor anything of the lists beyond what the caller named.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AccessRefused",
    "AuditFailed",
    "BadRequest",
    "CannotListen",
    "Forbidden",
    "HashCheckError",
    "ImportRejected",
    "MalformedInput",
    "ManifestNotKept",
    "NotReady",
    "OverLimit",
    "Problem",
    "ReceiptsUnavailable",
    "SigningKeyError",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "Unauthenticated",
    "UnknownList",
    "UnknownTenant",
    "UnsafeListen",
    "Unsupported",
]


class HashCheckError(Exception):
    """Base class of the errors HashCheck raises on purpose."""


class BadRequest(HashCheckError):
    """A request that can never succeed as sent: wrong width, unknown algorithm."""


class NotReady(HashCheckError):
    """The server has no generation loaded yet; the caller should retry."""


class AccessRefused(HashCheckError):
    """A call refused because of who makes it, before any lookup runs."""


class Unauthenticated(AccessRefused):
    """No API key, or one the server does not know or that has expired."""


class Forbidden(AccessRefused):
    """A known key whose tenant may not make calls now (it is disabled)."""


class OverLimit(AccessRefused):
    """Over the tenant's rate or stream limit; `retry_after_seconds` says when."""

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class UnsafeListen(HashCheckError):
    """A server without tenants asked to listen beyond loopback, without opt-out."""


class CannotListen(HashCheckError):
    """The gRPC or the metrics address is taken by another process, or invalid."""


class ReceiptsUnavailable(HashCheckError):
    """Receipts were asked for, but this server has no key to sign them with."""


class Unsupported(HashCheckError):
    """A call this server is not set up to take, such as a dispute on a replica."""


class SigningKeyError(HashCheckError):
    """The hotline's signing key file is missing, unreadable, or would be replaced."""


class ImportRejected(HashCheckError):
    """An import that cannot be used as given. Nothing of it was committed."""


@dataclass(frozen=True)
class Problem:
    """One unreadable record of an import file."""

    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


class MalformedInput(ImportRejected):
    """Unreadable records of an import file, each with file, line and reason."""

    def __init__(self, problems: list[Problem], total: int | None = None) -> None:
        self.problems = problems
        self.total = len(problems) if total is None else total
        shown = "\n".join(f"  {problem}" for problem in problems)
        more = self.total - len(problems)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"{self.total} malformed record(s); nothing was imported. "
            f"Fix them and import again:\n{shown}{tail}"
        )


class StoreError(HashCheckError):
    """The data directory cannot be used as a HashCheck store."""


class StoreFull(StoreError):
    """The disk or the store's map size is exhausted; the change was rolled back."""


class StoreCorrupt(StoreError):
    """The data directory is not a HashCheck store, or is damaged."""


class UnknownList(StoreError):
    """A list name that the store does not hold."""


class UnknownTenant(StoreError):
    """A tenant name that the store does not hold."""


class AuditFailed(StoreError):
    """A hit could not be written to the audit log, so it is not reported."""


class ManifestNotKept(StoreError):
    """No manifest was kept for the generation asked for."""
