"""Disputes: a tenant contests a hit, and operators resolve it.

A company that believes a hit is wrong (a stock photo of its CMS, say) sends
a Dispute with the hash, its reason and, if it kept it, the hit's receipt.
The server stores the dispute and answers with its id; operators see the
queue with `hashcheck-server disputes list` and decide with `disputes
resolve` (an upheld dispute is usually followed by `remove`, which
`resolve --remove` does in the same command).

Evidence: a tenant may only dispute a hash it was told was a hit, shown by

- a receipt signed with this server's key, issued to this tenant for this
  hash (receipts of an earlier key cannot be checked here and count as
  none), or else
- an audit entry: a hit of this hash reported to this tenant.

Neither looks at the lists as they are now, so the answer never tells a
tenant whether a hash is listed: a hash on no list and a listed hash it was
never told about get the same INVALID_ARGUMENT, with the same message.
(How long the answer takes depends only on the audit, not on the lists.)
The audit is scanned (hashcheck_server.withdrawals.audit_scan: one scan at a
time per process, others get RESOURCE_EXHAUSTED with a retry delay).

Records: the ``disputes`` database of the data directory
(hashcheck_server.layout), ``<dispute id>`` -> JSON of `DisputeRecord`.
A dispute changes no answer, so writing one commits no generation. A tenant
that disputes a hash again while its dispute is open gets the open one's id.
Writing waits for the store's one writer, which an import holds for minutes:
so that disputes never take the threads checks need, one dispute at a time
per process waits, and others meanwhile get RESOURCE_EXHAUSTED with a delay.
Replicas serve read-only snapshots and take no disputes (FAILED_PRECONDITION).
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from hashcheck._algorithms import Algorithm
from hashcheck._exceptions import ReceiptInvalid
from hashcheck._receipts import Receipt, verify_receipt
from hashcheck.v1 import hashcheck_pb2
from hashcheck_server import layout
from hashcheck_server.audit import AuditLog
from hashcheck_server.caller import Caller
from hashcheck_server.errors import BadRequest, HashCheckError, OverLimit, Unsupported
from hashcheck_server.signing import SigningKey
from hashcheck_server.withdrawals import audit_scan
from hashcheck_server.writes import writing

__all__ = [
    "OPEN",
    "OUTCOMES",
    "REJECTED",
    "UPHELD",
    "DisputeDesk",
    "DisputeRecord",
    "open_dispute",
    "read_disputes",
    "resolve_dispute",
]

logger = logging.getLogger(__name__)

OPEN = "open"
UPHELD = "upheld"
REJECTED = "rejected"
OUTCOMES = (UPHELD, REJECTED)

#: The longest reason taken, in characters.
MAX_REASON_CHARS = 2000

#: Held by the one dispute of this process that is being written.
_STORING = threading.Lock()
_STORING_RETRY_SECONDS = 5.0

#: The one answer for a hash without evidence, whether it is listed or not.
NO_EVIDENCE_MESSAGE = (
    "A dispute needs a hit of this hash reported to you, or its receipt, and "
    "this server has neither. Dispute hashes you were told were hits, and "
    "send the hit's receipt if you kept it."
)


@dataclass(frozen=True)
class DisputeRecord:
    """One dispute: who contests which hash, why, and what became of it."""

    id: str
    tenant: str
    algorithm: str
    hash: str
    reason: str
    #: The receipt sent with it: a serialized hashcheck.v1.Receipt, base64.
    receipt: str | None
    #: What showed the tenant was told of the hit: "receipt" or "audit".
    evidence: str
    created_at: float
    status: str = OPEN
    resolved_at: float | None = None
    note: str = ""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> DisputeRecord:
        return cls(**json.loads(raw))


class DisputeDesk:
    """Takes tenants' disputes into the store (the Dispute RPC).

        desk = DisputeDesk(environment, audit, signing_key)
        dispute_id = desk.take(request, current_caller())

    `environment` is None on a replica, which refuses disputes.
    """

    def __init__(
        self,
        environment: layout.Environment | None,
        audit: AuditLog | None,
        signing_key: SigningKey | None,
    ) -> None:
        self._environment = environment
        self._audit = audit
        self._signing_key = signing_key

    def take(self, request: hashcheck_pb2.DisputeRequest, caller: Caller | None) -> str:
        """Store the dispute, or raise BadRequest; returns its id."""
        if self._environment is None:
            raise Unsupported(
                "This server is a replica and takes no disputes; send them to "
                "the hotline's primary server."
            )
        algorithm, digest = _checked_hash(request)
        reason = _checked_reason(request.reason)
        tenant = caller.tenant_name if caller is not None else ""
        evidence = self._evidence(request, algorithm, digest, tenant)

        receipt = None
        if request.HasField("receipt"):
            serialized = request.receipt.SerializeToString(deterministic=True)
            receipt = base64.b64encode(serialized).decode("ascii")
        record = DisputeRecord(
            id=_new_id(),
            tenant=tenant,
            algorithm=algorithm.value,
            hash=digest.hex(),
            reason=reason,
            receipt=receipt,
            evidence=evidence,
            created_at=time.time(),
        )
        stored, is_new = _store_dispute(self._environment, record)
        if is_new:
            logger.info(
                "dispute %s opened by tenant %s on a %s hit",
                stored.id,
                tenant or "(none)",
                algorithm.value,
                extra={"event": "dispute_opened", "dispute_id": stored.id},
            )
        return stored.id

    def _evidence(
        self,
        request: hashcheck_pb2.DisputeRequest,
        algorithm: Algorithm,
        digest: bytes,
        tenant: str,
    ) -> str:
        """ "receipt" or "audit"; BadRequest when the tenant shows neither."""
        if request.HasField("receipt") and self._can_check(request.receipt):
            _require_receipt_of(request.receipt, self._signing_key, algorithm, digest)
            _require_issued_to(request.receipt, tenant)
            return "receipt"
        if self._audit is not None and _was_reported(
            self._audit, tenant, algorithm, digest
        ):
            return "audit"
        raise BadRequest(NO_EVIDENCE_MESSAGE)

    def _can_check(self, receipt: hashcheck_pb2.Receipt) -> bool:
        """Whether this server holds the key the receipt names."""
        key = self._signing_key
        return key is not None and receipt.key_id == key.key_id


def read_disputes(
    environment: layout.Environment, *, open_only: bool = False
) -> list[DisputeRecord]:
    """The disputes, oldest first; with `open_only`, those still open."""
    with environment.read() as transaction:
        disputes = _all_disputes(environment, transaction)
    if open_only:
        disputes = [d for d in disputes if d.status == OPEN]
    return sorted(disputes, key=lambda d: (d.created_at, d.id))


def resolve_dispute(
    environment: layout.Environment, dispute_id: str, outcome: str, note: str = ""
) -> DisputeRecord:
    """Close an open dispute as "upheld" or "rejected"; the record as stored."""
    if outcome not in OUTCOMES:
        raise HashCheckError(f"{outcome!r} is no outcome; say {' or '.join(OUTCOMES)}.")
    with writing(environment) as transaction:
        record = _open_record(environment, transaction, dispute_id)
        record = replace(record, status=outcome, resolved_at=time.time(), note=note)
        transaction.put(dispute_id.encode(), record.to_json(), db=environment.disputes)
    return record


def open_dispute(environment: layout.Environment, dispute_id: str) -> DisputeRecord:
    """The dispute with this id; HashCheckError unless there is one and it is open."""
    with environment.read() as transaction:
        return _open_record(environment, transaction, dispute_id)


def _open_record(
    environment: layout.Environment, transaction: Any, dispute_id: str
) -> DisputeRecord:
    raw = None
    if environment.disputes is not None:
        raw = transaction.get(dispute_id.encode(), db=environment.disputes)
    if raw is None:
        raise HashCheckError(
            f"There is no dispute {dispute_id!r}; see `hashcheck-server disputes list`."
        )
    record = DisputeRecord.from_json(bytes(raw))
    if record.status != OPEN:
        raise HashCheckError(
            f"Dispute {dispute_id} is {record.status} already; nothing changed."
        )
    return record


def _checked_hash(request: hashcheck_pb2.DisputeRequest) -> tuple[Algorithm, bytes]:
    try:
        algorithm = Algorithm.from_proto(request.algorithm)
    except ValueError:
        raise BadRequest(
            f"Unknown algorithm {request.algorithm}; send MD5, SHA1, SHA256 or PDQ."
        ) from None
    if len(request.hash) != algorithm.width:
        raise BadRequest(
            f"The hash is {len(request.hash)} bytes; a {algorithm.value} hash is "
            f"{algorithm.width}. Send the raw hash, not hex."
        )
    return algorithm, request.hash


def _checked_reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise BadRequest("Say why you dispute the hit: the reason is empty.")
    if len(reason) > MAX_REASON_CHARS:
        raise BadRequest(
            f"The reason is {len(reason)} characters; keep it to "
            f"{MAX_REASON_CHARS} and send details to the hotline separately."
        )
    return reason


def _require_receipt_of(
    receipt: hashcheck_pb2.Receipt,
    key: SigningKey | None,
    algorithm: Algorithm,
    digest: bytes,
) -> None:
    """BadRequest unless the receipt is this server's, for this hash."""
    assert key is not None, "checked by _can_check"
    try:
        verified = verify_receipt(Receipt.from_proto(receipt), key.public_key)
    except ReceiptInvalid as error:
        raise BadRequest(f"The receipt does not hold: {error}") from None
    if verified.algorithm is not algorithm or verified.hash != digest:
        raise BadRequest(
            "The receipt is for another hash; send the receipt of this hash's hit."
        )


def _require_issued_to(receipt: hashcheck_pb2.Receipt, tenant: str) -> None:
    """BadRequest unless the (verified) receipt was issued to `tenant`."""
    body = hashcheck_pb2.ReceiptBody.FromString(receipt.body)
    if body.tenant != tenant:
        raise BadRequest(
            "The receipt was issued to another tenant; dispute your own hits."
        )


def _was_reported(
    audit: AuditLog, tenant: str, algorithm: Algorithm, digest: bytes
) -> bool:
    """Whether the audit holds a hit of the hash reported to the tenant."""
    wanted = digest.hex()
    with audit_scan():
        return any(
            entry.hash == wanted and entry.algorithm == algorithm.value
            for entry in audit.entries(tenant=tenant)
        )


def _store_dispute(
    environment: layout.Environment, record: DisputeRecord
) -> tuple[DisputeRecord, bool]:
    """Store a new dispute, or find the tenant's open one on the same hash.

    Returns the dispute and whether it is new.
    """
    subject = (record.tenant, record.algorithm, record.hash)
    if not _STORING.acquire(blocking=False):
        raise OverLimit(
            "The server is storing another dispute; retry in a few seconds.",
            retry_after_seconds=_STORING_RETRY_SECONDS,
        )
    try:
        return _put_dispute(environment, record, subject)
    finally:
        _STORING.release()


def _put_dispute(
    environment: layout.Environment,
    record: DisputeRecord,
    subject: tuple[str, str, str],
) -> tuple[DisputeRecord, bool]:
    with writing(environment) as transaction:
        for existing in _all_disputes(environment, transaction):
            same = (existing.tenant, existing.algorithm, existing.hash) == subject
            if same and existing.status == OPEN:
                return existing, False
        while transaction.get(record.id.encode(), db=environment.disputes):
            record = replace(record, id=_new_id())
        transaction.put(record.id.encode(), record.to_json(), db=environment.disputes)
    return record, True


def _all_disputes(
    environment: layout.Environment, transaction: Any
) -> list[DisputeRecord]:
    if environment.disputes is None:
        return []
    cursor = transaction.cursor(db=environment.disputes)
    return [DisputeRecord.from_json(bytes(value)) for _, value in cursor]


def _new_id() -> str:
    """A dispute id: its day and 32 random bits, e.g. dsp-20260115-3f9a0c1d."""
    day = time.strftime("%Y%m%d", time.gmtime())
    return f"dsp-{day}-{secrets.token_hex(4)}"
