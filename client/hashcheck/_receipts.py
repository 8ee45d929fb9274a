"""Receipts: the hotline's signed word that a hash was a hit, and on which lists.

Ask for them with `want_receipts=True`; each hit then carries `hit.receipt`:

    result = client.check(hashes, want_receipts=True)
    key = hashcheck.PublicKey.from_text(HOTLINE_PUBLIC_KEY)
    for hit in result.hits:
        verified = hashcheck.verify_receipt(hit.receipt, key)
        print(verified.hex, verified.list_names, verified.generation)

A receipt is three values, as in hashcheck.v1.Receipt:

- `body`: a serialized hashcheck.v1.ReceiptBody (algorithm, the caller's own
  hash, every list with its category, the generation, when it was issued, the
  tenant it was issued to, and for PDQ the distance), exactly the bytes that
  were signed;
- `signature`: the Ed25519 signature of `body` by the hotline's key;
- `key_id`: the hex SHA-256 of that key's raw 32 bytes.

Keep the receipt as it came (`Receipt.to_json()` or `to_bytes()`): the body
is checked as bytes, never re-encoded. What a receipt says is read only from
a `VerifiedReceipt`, that is, after its signature was checked; a `Receipt`
deliberately offers no unchecked view of its body.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from hashcheck._algorithms import Algorithm
from hashcheck._exceptions import ReceiptInvalid
from hashcheck._keys import PublicKey, as_public_key
from hashcheck._models import ListMatch
from hashcheck.v1 import hashcheck_pb2

__all__ = ["Receipt", "VerifiedReceipt", "verify_receipt"]


@dataclass(frozen=True, slots=True)
class Receipt:
    """A hit's receipt as the server sent it; `verify_receipt` says what it attests.

    line = json.dumps(hit.receipt.to_json())    # keep it
    receipt = Receipt.from_json(json.loads(line))
    """

    body: bytes
    signature: bytes
    key_id: str

    @classmethod
    def from_proto(cls, message: hashcheck_pb2.Receipt) -> Receipt:
        return cls(message.body, message.signature, message.key_id)

    @classmethod
    def from_bytes(cls, data: bytes) -> Receipt:
        """A receipt from a serialized hashcheck.v1.Receipt."""
        try:
            message = hashcheck_pb2.Receipt.FromString(data)
        except DecodeError:
            raise ReceiptInvalid(
                "These bytes are not a serialized hashcheck.v1.Receipt."
            ) from None
        return cls.from_proto(message)

    @classmethod
    def from_json(cls, record: Mapping[str, object]) -> Receipt:
        """A receipt from the object `to_json` made; other keys are ignored."""
        try:
            body = _base64_field(record, "body")
            signature = _base64_field(record, "signature")
            key_id = record["key_id"]
        except KeyError as missing:
            raise ReceiptInvalid(f"The receipt has no {missing} field.") from None
        if not isinstance(key_id, str):
            raise ReceiptInvalid("The receipt's key_id is not a string.")
        return cls(body, signature, key_id)

    def to_bytes(self) -> bytes:
        """The receipt as a serialized hashcheck.v1.Receipt."""
        message = hashcheck_pb2.Receipt(
            body=self.body, signature=self.signature, key_id=self.key_id
        )
        return message.SerializeToString(deterministic=True)

    def to_json(self) -> dict[str, str]:
        """The receipt as a JSON-ready object: base64 body and signature, key id."""
        return {
            "body": base64.b64encode(self.body).decode("ascii"),
            "signature": base64.b64encode(self.signature).decode("ascii"),
            "key_id": self.key_id,
        }


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    """What a receipt with a valid signature attests.

    `hash` is the caller's own hash that hit; `lists` every list it was on,
    with its category there; `generation` the state of the lists that
    answered; `issued_at` when, in seconds since the epoch; `tenant` whom the
    hit was reported to (empty on a server without tenants); `distance` the
    Hamming distance of a PDQ match (0 for exact algorithms); `key_id` the
    key that signed it.
    """

    algorithm: Algorithm
    hash: bytes
    lists: tuple[ListMatch, ...]
    generation: int
    issued_at: float
    tenant: str
    distance: int
    key_id: str

    @property
    def hex(self) -> str:
        """The hash as lowercase hex."""
        return self.hash.hex()

    @property
    def list_names(self) -> tuple[str, ...]:
        return tuple(match.list for match in self.lists)


def verify_receipt(
    receipt: Receipt | bytes, public_key: PublicKey | str | bytes
) -> VerifiedReceipt:
    """Check a receipt's signature against the hotline's key; what it attests.

        verified = hashcheck.verify_receipt(hit.receipt, hotline_key)

    `receipt` is a `Receipt` or a serialized hashcheck.v1.Receipt;
    `public_key` a `PublicKey`, its text (base64 or PEM), or its raw bytes.
    Raises `ReceiptInvalid` when the receipt names another key, when its
    signature does not match its body (a flipped byte anywhere), or when the
    signed body is not a well-formed receipt. Needs the `cryptography`
    package (`pip install 'hashcheck[verify]'`); ImportError says so.
    """
    key = as_public_key(public_key)
    if isinstance(receipt, bytes | bytearray):
        receipt = Receipt.from_bytes(bytes(receipt))

    if receipt.key_id != key.key_id:
        raise ReceiptInvalid(
            f"The receipt was signed by the key with id {receipt.key_id!r}, not by "
            f"the key given (id {key.key_id}). Check it against the hotline's key "
            "with the receipt's id."
        )
    if not key.is_valid_signature(receipt.signature, receipt.body):
        raise ReceiptInvalid(
            "The receipt's signature does not match its body: the receipt was "
            "altered, or was not signed by this key."
        )
    return _attested(receipt.body, key.key_id)


def _attested(body: bytes, key_id: str) -> VerifiedReceipt:
    """The fields of a signed body; ReceiptInvalid when they make no receipt."""
    try:
        message = hashcheck_pb2.ReceiptBody.FromString(body)
        algorithm = Algorithm.from_proto(message.algorithm)
    except (DecodeError, ValueError):
        raise ReceiptInvalid(
            "The receipt is signed, but its body is not a receipt this SDK can "
            "read. Report this to the hotline."
        ) from None
    if len(message.hash) != algorithm.width or not message.lists:
        raise ReceiptInvalid(
            "The receipt is signed, but its body names no whole hash or no list. "
            "Report this to the hotline."
        )
    return VerifiedReceipt(
        algorithm=algorithm,
        hash=message.hash,
        lists=tuple(ListMatch(m.list, m.category) for m in message.lists),
        generation=message.generation,
        issued_at=message.issued_at,
        tenant=message.tenant,
        distance=message.distance,
        key_id=key_id,
    )


def _base64_field(record: Mapping[str, object], name: str) -> bytes:
    value = record[name]
    if not isinstance(value, str):
        raise ReceiptInvalid(f"The receipt's {name} is not a base64 string.")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ReceiptInvalid(f"The receipt's {name} is not valid base64.") from None
