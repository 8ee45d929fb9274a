"""HashCheck: check file hashes against a hotline's lists of known abuse material.

    import hashcheck

    with hashcheck.Client("hashcheck.example:50051", api_key="...") as client:
        result = client.check(["d41d8cd98f00b204e9800998ecf8427e"])
        for hit in result.hits:
            print(hit.hex, hit.algorithm.value, hit.list_names)

Only hashes leave the caller. The SDK needs nothing beyond grpcio and
protobuf; `hashcheck.AsyncClient` is the same client for asyncio, and the
`hashcheck` command wraps both for scripts. Checking the hotline's signed
receipts and manifests (`verify_receipt`, `verify_manifest`) also needs
`cryptography`: `pip install 'hashcheck[verify]'`. PDQ hashes of images
(`pdq_hash_file`, and PDQ in `hashcheck scan`) need
`pip install 'hashcheck[pdq]'`.
"""

# No `from __future__ import annotations` here: nothing below is annotated,
# and it would add a public name `annotations` to the package.

from hashcheck._algorithms import Algorithm, infer_algorithm, parse_hex
from hashcheck._async_client import AsyncClient
from hashcheck._client import Client
from hashcheck._config import TLSOptions
from hashcheck._disputes import Withdrawal
from hashcheck._exceptions import (
    AuthenticationError,
    CallError,
    HashCheckError,
    InvalidHash,
    InvalidRequest,
    ManifestInvalid,
    PermissionDenied,
    ProtocolError,
    RateLimited,
    ReceiptInvalid,
    ServerError,
    ServerUnavailable,
)
from hashcheck._hashing import FileHashes, hash_file
from hashcheck._keys import PublicKey
from hashcheck._manifests import VerifiedManifest, verify_manifest
from hashcheck._models import (
    AlgorithmInfo,
    Batch,
    BatchResult,
    CheckResult,
    Hit,
    Info,
    ListMatch,
)
from hashcheck._packing import pack_hashes
from hashcheck._pdq import PdqHash, pdq_hash_file
from hashcheck._receipts import Receipt, VerifiedReceipt, verify_receipt
from hashcheck._version import __version__

__all__ = [
    "Algorithm",
    "AlgorithmInfo",
    "AsyncClient",
    "AuthenticationError",
    "Batch",
    "BatchResult",
    "CallError",
    "CheckResult",
    "Client",
    "FileHashes",
    "HashCheckError",
    "Hit",
    "Info",
    "InvalidHash",
    "InvalidRequest",
    "ListMatch",
    "ManifestInvalid",
    "PdqHash",
    "PermissionDenied",
    "ProtocolError",
    "PublicKey",
    "RateLimited",
    "Receipt",
    "ReceiptInvalid",
    "ServerError",
    "ServerUnavailable",
    "TLSOptions",
    "VerifiedManifest",
    "VerifiedReceipt",
    "Withdrawal",
    "__version__",
    "hash_file",
    "infer_algorithm",
    "pack_hashes",
    "parse_hex",
    "pdq_hash_file",
    "verify_manifest",
    "verify_receipt",
]
