"""Tenants: the companies a hotline admits, their API keys and their limits.

A tenant is one admitted company. It holds up to two API keys (two only while
a key is being rotated), sees hits only from the lists and categories it was
granted, and is held to its own limits. The hotline's own staff are tenants
flagged `operator`: only they may see table sizes.

Storage: the ``tenants`` named database of the data directory's LMDB
environment (see hashcheck_server.layout), changed by `TenantRegistry`:

- ``tenant/<name>``  JSON of `Tenant` (its keys only as `StoredKey`: an id
  and an HMAC digest, never the key itself);
- ``secret``         32 random bytes: the HMAC key under which API keys are
  digested, made when the first tenant is added;
- ``version``        JSON {"number", "changed_at"}: incremented by every
  tenant change, so that running servers notice one with a single tiny read.

Every tenant change also makes a new generation (same tables and lists, same
digest), so that snapshots, and the replicas that follow them, carry it: a
revoked key must stop working on every replica, not only on the primary.

An API key reads ``hck_<key id>_<secret part>``: 12 hex characters naming the
key and 43 URL-safe characters (256 random bits). It is shown once, when it
is made. The store keeps HMAC-SHA256(store secret, key), and a check finds the
stored key by its id and compares digests with `hmac.compare_digest`.

Why a keyed hash and not scrypt or another slow hash: slow hashes protect
passwords, which are guessable. These keys carry 256 random bits, so nobody
can search for one whatever the digest costs, and a check must cost
microseconds on every call, not tens of milliseconds. The HMAC key makes a
digest useless without the store's secret, for example in a log or a
backup of the tenant records alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lmdb

from hashcheck_server import layout
from hashcheck_server.errors import HashCheckError, UnknownTenant
from hashcheck_server.generation import ListMatch
from hashcheck_server.manifest import keep_manifest

__all__ = [
    "Limits",
    "StoredKey",
    "Tenant",
    "TenantRegistry",
    "TenantSnapshot",
]

KEY_PREFIX = "hck"

#: Keys last this long after a rotation unless told otherwise: a day gives
#: a company's deployment time to roll the new key out.
DEFAULT_OLD_KEY_SECONDS = 24 * 3600.0

#: How many streams a tenant may hold open unless set otherwise. Each open
#: stream holds one server thread, so this protects the others.
DEFAULT_MAX_STREAMS = 4

_DB_NAME = b"tenants"
_RECORD_PREFIX = b"tenant/"
_SECRET_KEY = b"secret"
_VERSION_KEY = b"version"
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY_ID_HEX = 12
#: Enough named databases to open any HashCheck environment read-only.
_MAX_DBS = 64

#: A digest no key produces: compared against when the key id is unknown, so
#: that unknown and wrong keys take the same steps.
_NO_DIGEST = bytes(32)

_databases: weakref.WeakKeyDictionary[layout.Environment, Any] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class Limits:
    """How much one tenant may ask of one server process.

    None means no limit of the tenant's own: the server's largest batch, no
    rate limit, any number of streams.
    """

    max_batch_hashes: int | None = None
    hashes_per_second: float | None = None
    #: Hashes the token bucket holds when full; None: one second's worth.
    burst_hashes: int | None = None
    max_streams: int | None = DEFAULT_MAX_STREAMS


@dataclass(frozen=True)
class StoredKey:
    """What the store keeps of an API key: its id and keyed digest."""

    key_id: str
    digest: str
    created_at: float
    expires_at: float | None = None

    def is_valid(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True)
class Tenant:
    """One admitted company: what it may see, its limits and its keys."""

    name: str
    #: The lists it matches against; None: every list.
    lists: tuple[str, ...] | None = None
    #: The categories it matches against, on those lists; None: every one.
    categories: tuple[str, ...] | None = None
    operator: bool = False
    disabled: bool = False
    limits: Limits = field(default_factory=Limits)
    #: A client certificate name (common name or DNS SAN) that authenticates
    #: as this tenant over mutual TLS; with a key, the key must come with it.
    client_cert_name: str | None = None
    keys: tuple[StoredKey, ...] = ()
    created_at: float = 0.0
    updated_at: float = 0.0

    def allows(self, match: ListMatch) -> bool:
        """Is a hit on this list, graded this way, one the tenant may see?"""
        if self.lists is not None and match.list not in self.lists:
            return False
        return self.categories is None or match.category in self.categories

    @property
    def sees_everything(self) -> bool:
        return self.lists is None and self.categories is None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Tenant:
        fields = json.loads(raw)
        return cls(
            name=fields["name"],
            lists=_optional_tuple(fields["lists"]),
            categories=_optional_tuple(fields["categories"]),
            operator=fields["operator"],
            disabled=fields["disabled"],
            limits=Limits(**fields["limits"]),
            client_cert_name=fields["client_cert_name"],
            keys=tuple(StoredKey(**key) for key in fields["keys"]),
            created_at=fields["created_at"],
            updated_at=fields["updated_at"],
        )


class TenantSnapshot:
    """Every tenant as committed at one version, indexed for authentication.

    Immutable once built; the server swaps whole snapshots when the version
    changes, so a check never sees half of a change.
    """

    def __init__(self, version: int, secret: bytes, tenants: Sequence[Tenant]) -> None:
        self.version = version
        self.tenants = {tenant.name: tenant for tenant in tenants}
        # Keyed once: each check copies this state instead of deriving the
        # HMAC key again (and looking the digest up by name) on every call.
        self._keyed = hmac.new(secret or secrets.token_bytes(32), None, hashlib.sha256)
        self._by_key_id = {
            key.key_id: (tenant, key, bytes.fromhex(key.digest))
            for tenant in tenants
            for key in tenant.keys
        }
        self._by_cert_name = {
            tenant.client_cert_name: tenant
            for tenant in tenants
            if tenant.client_cert_name
        }

    @classmethod
    def load(cls, environment: layout.Environment) -> TenantSnapshot:
        database = tenant_database(environment)
        if database is None:
            return cls(0, b"", ())
        with environment.read() as transaction:
            version = _read_version(transaction, database)
            secret = bytes(transaction.get(_SECRET_KEY, b"", db=database))
            tenants = _read_tenants(transaction, database)
        return cls(version, secret, tenants)

    @classmethod
    def load_snapshot_directory(cls, path: Path) -> TenantSnapshot:
        """The tenants of a published snapshot (hashcheck_server.snapshot).

        A snapshot never changes once published, so it is read without
        LMDB's lock file: the follower may hold the same environment open,
        and LMDB's locks do not survive a second handle in one process.
        """
        try:
            environment = lmdb.open(
                str(path), readonly=True, lock=False, max_dbs=_MAX_DBS
            )
        except lmdb.Error as error:
            raise layout.translate_lmdb_error(error, path) from error
        try:
            database = environment.open_db(_DB_NAME, create=False)
        except lmdb.NotFoundError:
            environment.close()
            return cls(0, b"", ())
        try:
            with environment.begin(buffers=True) as transaction:
                version = _read_version(transaction, database)
                secret = bytes(transaction.get(_SECRET_KEY, b"", db=database))
                tenants = _read_tenants(transaction, database)
        finally:
            environment.close()
        return cls(version, secret, tenants)

    @property
    def binds_certificates(self) -> bool:
        """Does any tenant name a client certificate (so names must be read)?"""
        return bool(self._by_cert_name)

    @property
    def requires_keys(self) -> bool:
        """Once any tenant exists, every call must say who it is."""
        return bool(self.tenants)

    def authenticate(
        self, key: str | None, cert_names: Sequence[str], now: float
    ) -> Tenant | None:
        """The tenant a call is from, or None when it cannot prove one.

        A key is checked in constant time against its stored digest. Without
        a key, a verified client certificate naming a tenant suffices; a key
        of a tenant bound to a certificate needs that certificate as well.
        """
        if key is None:
            for name in cert_names:
                if name in self._by_cert_name:
                    return self._by_cert_name[name]
            return None

        found = self._by_key_id.get(_key_id_of(key))
        expected = found[2] if found else _NO_DIGEST
        keyed = self._keyed.copy()
        keyed.update(key.encode("utf-8", "replace"))
        is_equal = hmac.compare_digest(keyed.digest(), expected)
        if found is None or not is_equal:
            return None
        tenant, stored, _ = found
        if not stored.is_valid(now):
            return None
        if tenant.client_cert_name and tenant.client_cert_name not in cert_names:
            return None
        return tenant


class TenantRegistry:
    """The write side of tenants, for the operator's `tenant` commands.

        registry = TenantRegistry(environment)
        tenant, key = registry.add("acme", lists=("police",))
        print(key)  # shown this once; only its digest is stored

    Every change is one LMDB write transaction that also bumps the version.
    """

    def __init__(self, environment: layout.Environment) -> None:
        self._environment = environment
        database = tenant_database(environment)
        if database is None:
            raise HashCheckError(
                f"{environment.path} has no tenants yet and is open read-only."
            )
        self._database = database

    def all(self) -> list[Tenant]:
        with self._environment.read() as transaction:
            return _read_tenants(transaction, self._database)

    def get(self, name: str) -> Tenant:
        with self._environment.read() as transaction:
            return self._require(transaction, name)

    def add(
        self,
        name: str,
        *,
        lists: Sequence[str] | None = None,
        categories: Sequence[str] | None = None,
        operator: bool = False,
        limits: Limits | None = None,
        client_cert_name: str | None = None,
    ) -> tuple[Tenant, str]:
        """Admit a tenant with a first key; returns it and the key, shown once."""
        _check_name(name)
        now = time.time()
        with self._writing() as transaction:
            if transaction.get(_record_key(name), db=self._database) is not None:
                raise HashCheckError(
                    f"A tenant named {name!r} exists already; see "
                    "`hashcheck-server tenant show`."
                )
            key, stored = _issue_key(self._secret(transaction), now)
            tenant = Tenant(
                name=name,
                lists=_optional_tuple(lists),
                categories=_optional_tuple(categories),
                operator=operator,
                limits=limits or Limits(),
                client_cert_name=client_cert_name or None,
                keys=(stored,),
                created_at=now,
                updated_at=now,
            )
            self._put(transaction, tenant)
        return tenant, key

    def rotate_key(
        self,
        name: str,
        *,
        old_valid_seconds: float = DEFAULT_OLD_KEY_SECONDS,
        revoke_old: bool = False,
    ) -> tuple[Tenant, str]:
        """Issue a new key. The newest old key stays valid for a while, or not.

        Keys older than that are dropped, so that at most two are ever valid.
        """
        now = time.time()
        with self._writing() as transaction:
            tenant = self._require(transaction, name)
            key, stored = _issue_key(self._secret(transaction), now)
            kept: tuple[StoredKey, ...] = ()
            current = [k for k in tenant.keys if k.is_valid(now)]
            if current and not revoke_old:
                newest = max(current, key=lambda k: k.created_at)
                expiry = now + old_valid_seconds
                if newest.expires_at is not None:
                    expiry = min(expiry, newest.expires_at)
                kept = (replace(newest, expires_at=expiry),)
            tenant = replace(tenant, keys=(*kept, stored), updated_at=now)
            self._put(transaction, tenant)
        return tenant, key

    def update(self, name: str, **changes: Any) -> Tenant:
        """Change fields of a tenant (lists, categories, limits, operator, ...)."""
        if "lists" in changes:
            changes["lists"] = _optional_tuple(changes["lists"])
        if "categories" in changes:
            changes["categories"] = _optional_tuple(changes["categories"])
        with self._writing() as transaction:
            tenant = self._require(transaction, name)
            tenant = replace(tenant, **changes, updated_at=time.time())
            self._put(transaction, tenant)
        return tenant

    def _require(self, transaction: Any, name: str) -> Tenant:
        raw = transaction.get(_record_key(name), db=self._database)
        if raw is None:
            raise UnknownTenant(
                f"There is no tenant named {name!r}; see "
                "`hashcheck-server tenant list`."
            )
        return Tenant.from_json(bytes(raw))

    def _secret(self, transaction: Any) -> bytes:
        secret = transaction.get(_SECRET_KEY, db=self._database)
        if secret is None:
            secret = secrets.token_bytes(32)
            transaction.put(_SECRET_KEY, secret, db=self._database)
        return bytes(secret)

    def _put(self, transaction: Any, tenant: Tenant) -> None:
        transaction.put(_record_key(tenant.name), tenant.to_json(), db=self._database)
        version = _read_version(transaction, self._database) + 1
        record = {"number": version, "changed_at": time.time()}
        transaction.put(_VERSION_KEY, json.dumps(record).encode(), db=self._database)

        previous = layout.read_generation_record(self._environment, transaction)
        layout.write_generation_record(
            self._environment,
            transaction,
            previous.number + 1,
            f"tenant {tenant.name} changed",
            previous.digest,
        )
        # Receipts issued from now on name this generation.
        keep_manifest(self._environment, transaction)

    @contextmanager
    def _writing(self) -> Iterator[Any]:
        """A write transaction that commits on success; LMDB errors translated."""
        try:
            with self._environment.write() as transaction:
                yield transaction
        except lmdb.Error as error:
            path = self._environment.path
            raise layout.translate_lmdb_error(error, path) from error


def tenant_database(environment: layout.Environment) -> Any:
    """The ``tenants`` database handle, made on first use; None if read-only.

    Opened once per environment: opening a named database on a writable
    environment takes LMDB's write lock, which an import may hold for long.
    """
    database = _databases.get(environment)
    if database is not None:
        return database
    readonly = environment.lmdb.flags()["readonly"]
    try:
        database = environment.lmdb.open_db(_DB_NAME, create=not readonly)
    except lmdb.NotFoundError:
        return None
    except lmdb.Error as error:
        raise layout.translate_lmdb_error(error, environment.path) from error
    _databases[environment] = database
    return database


def read_version(environment: layout.Environment) -> int:
    """The tenant version now committed: one small read."""
    database = tenant_database(environment)
    if database is None:
        return 0
    with environment.read() as transaction:
        return _read_version(transaction, database)


def digest_key(secret: bytes, key: str) -> bytes:
    """HMAC-SHA256 of the key under the store's secret (one C call)."""
    return hmac.digest(secret, key.encode("utf-8", "replace"), "sha256")


def _issue_key(secret: bytes, now: float) -> tuple[str, StoredKey]:
    key_id = secrets.token_hex(_KEY_ID_HEX // 2)
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return key, StoredKey(key_id, digest_key(secret, key).hex(), now)


def _key_id_of(key: str) -> str:
    prefix, _, rest = key.partition("_")
    key_id, _, secret_part = rest.partition("_")
    if prefix != KEY_PREFIX or len(key_id) != _KEY_ID_HEX or not secret_part:
        return ""
    return key_id


def _read_version(transaction: Any, database: Any) -> int:
    raw = transaction.get(_VERSION_KEY, db=database)
    return 0 if raw is None else int(json.loads(bytes(raw))["number"])


def _read_tenants(transaction: Any, database: Any) -> list[Tenant]:
    cursor = transaction.cursor(db=database)
    tenants: list[Tenant] = []
    if not cursor.set_range(_RECORD_PREFIX):
        return tenants
    for key, value in cursor:
        if not bytes(key).startswith(_RECORD_PREFIX):
            break
        tenants.append(Tenant.from_json(bytes(value)))
    return tenants


def _record_key(name: str) -> bytes:
    return _RECORD_PREFIX + name.encode()


def _check_name(name: str) -> None:
    if not _NAME_PATTERN.fullmatch(name):
        raise HashCheckError(
            f"{name!r} cannot name a tenant: use 1 to 64 letters, digits, dots, "
            "dashes or underscores, starting with a letter or digit."
        )


def _optional_tuple(values: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)
