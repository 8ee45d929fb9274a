"""Signing a reply's receipts: one per hit, when the request asks for them.

A receipt's body is a hashcheck.v1.ReceiptBody serialized deterministically
(fields in number order, each once), and its signature is the Ed25519
signature of exactly those bytes (see hashcheck.v1.Receipt). The body holds
the caller's own hash, every list and category the reply names for the hit,
the generation that answered, the time the reply was made, the tenant it
is for, and the distance of a PDQ match.

Receipts are made from the finished reply, not from the lookup, so that each
one attests exactly what the caller was told, after anything that trims a
reply to what a tenant may see. Hits of one reply share `issued_at`.

Nothing here runs for a request without `want_receipts`.
"""

from __future__ import annotations

from hashcheck._algorithms import Algorithm
from hashcheck.v1 import hashcheck_pb2
from hashcheck_server.signing import SigningKey

__all__ = ["sign_receipts"]


def sign_receipts(
    reply: hashcheck_pb2.CheckReply,
    hashes: bytes,
    algorithm: Algorithm,
    key: SigningKey,
    *,
    tenant: str,
    issued_at: float,
) -> None:
    """Add to `reply` one signed receipt per hit, parallel to its hit_positions."""
    width = algorithm.width
    provenance_lists = [list(provenance.lists) for provenance in reply.provenances]
    distances = reply.hit_distances
    for index, (position, provenance) in enumerate(
        zip(reply.hit_positions, reply.hit_provenances, strict=True)
    ):
        body = hashcheck_pb2.ReceiptBody(
            algorithm=algorithm.proto,
            hash=hashes[position * width : (position + 1) * width],
            lists=provenance_lists[provenance],
            generation=reply.generation,
            issued_at=issued_at,
            tenant=tenant,
            distance=distances[index] if distances else 0,
        )
        signed = body.SerializeToString(deterministic=True)
        reply.receipts.add(body=signed, signature=key.sign(signed), key_id=key.key_id)
