"""`hashcheck-server tenant ...` and `hashcheck-server audit ...`: admitted companies.

    hashcheck-server tenant add --data DIR NAME [--lists L1,L2] [--categories C1,C2]
        [--allow-unknown-lists] [--operator] [--max-batch N] [--rate N] [--burst N]
        [--max-streams N] [--client-cert-name NAME]
    hashcheck-server tenant list --data DIR [--json]
    hashcheck-server tenant show --data DIR NAME
    hashcheck-server tenant disable|enable --data DIR NAME
    hashcheck-server tenant rotate-key --data DIR NAME [--old-key-hours H|--revoke-old]
    hashcheck-server tenant set-limits --data DIR NAME [--lists ... | --all-lists]
        [--categories ... | --all-categories] [--allow-unknown-lists]
        [--max-batch N] [--rate N] [--burst N] [--max-streams N]
        [--operator | --no-operator]
    hashcheck-server audit export --data DIR [--since ISO-TIME] [--tenant NAME]
    hashcheck-server audit prune --data DIR --older-than DAYS

`tenant add` and `tenant rotate-key` print the new key alone on the last line
of standard output; it is shown this once. `audit export` prints one JSON
object a line with `time`, `tenant`, `algorithm`, `hash`, `lists`, `matches`,
`request_id`, `peer`, `generation` and `sequence`, and for a PDQ hit its
`distance`. For the numeric limits, 0 means no limit of the tenant's own.
Running servers see every change within their reload interval, without a
restart.

A tenant's scope is checked against the store, because a misspelt name would
otherwise silently give the company no hits: `--lists` naming a list the
store does not hold exits 2 with the known lists, unless
`--allow-unknown-lists` says the list is still to be imported; a category
that none of the tenant's lists grades, and an allow list (whose hashes never
hit), are warned about on standard error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeAlias

from hashcheck._algorithms import Algorithm
from hashcheck_server import layout
from hashcheck_server.audit import AuditEntry, AuditLog
from hashcheck_server.errors import HashCheckError, UnknownList
from hashcheck_server.tenants import (
    DEFAULT_OLD_KEY_SECONDS,
    Limits,
    Tenant,
    TenantRegistry,
)

__all__ = ["add_commands"]

EXIT_OK = 0

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_commands(commands: Commands) -> None:
    """Register `tenant` and `audit` with the `hashcheck-server` parser."""
    tenant = commands.add_parser("tenant", help="admit companies and manage keys")
    actions = tenant.add_subparsers(
        dest="tenant_command", required=True, metavar="ACTION"
    )
    _add_tenant_add(actions)
    _add_simple(actions, "list", "every tenant", _run_list, with_name=False)
    _add_simple(actions, "show", "one tenant, without its keys", _run_show)
    _add_simple(actions, "disable", "refuse the tenant's calls", _run_disable)
    _add_simple(actions, "enable", "accept the tenant's calls again", _run_enable)
    _add_rotate_key(actions)
    _add_set_limits(actions)

    audit = commands.add_parser("audit", help="the log of every hit reported")
    audit_actions = audit.add_subparsers(
        dest="audit_command", required=True, metavar="ACTION"
    )
    _add_export(audit_actions)
    _add_prune(audit_actions)


def _data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="the data directory")


def _limit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-batch", type=int, help="largest batch, in hashes")
    parser.add_argument("--rate", type=float, help="hashes a second (token bucket)")
    parser.add_argument("--burst", type=int, help="bucket size, in hashes")
    parser.add_argument("--max-streams", type=int, help="streams open at once")
    parser.add_argument(
        "--client-cert-name",
        help="a client certificate name (CN or DNS SAN) that identifies the "
        "tenant over mutual TLS",
    )


def _allow_unknown_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-unknown-lists",
        action="store_true",
        help="accept --lists names the store does not hold yet (lists to be "
        "imported later)",
    )


def _add_tenant_add(actions: Commands) -> None:
    command = actions.add_parser("add", help="admit a tenant and print its key")
    _data_argument(command)
    command.add_argument("name")
    command.add_argument("--lists", type=_names, help="L1,L2 (default: every list)")
    command.add_argument(
        "--categories", type=_names, help="C1,C2 (default: every category)"
    )
    _allow_unknown_argument(command)
    command.add_argument(
        "--operator", action="store_true", help="the hotline's own staff"
    )
    _limit_arguments(command)
    command.set_defaults(run=_run_add)


def _run_add(args: argparse.Namespace) -> int:
    limits = _changed_limits(Limits(), args)
    with _environment(args.data, create=True) as environment:
        _check_scope(
            environment,
            args.lists,
            args.categories,
            named_lists=args.lists or (),
            allow_unknown=args.allow_unknown_lists,
        )
        registry = TenantRegistry(environment)
        tenant, key = registry.add(
            args.name,
            lists=args.lists,
            categories=args.categories,
            operator=args.operator,
            limits=limits,
            client_cert_name=args.client_cert_name,
        )
    print(_describe(tenant))
    print("API key, shown this once (only its digest is stored):")
    print(key)
    return EXIT_OK


def _add_simple(
    actions: Commands,
    name: str,
    help_text: str,
    run: Callable[[argparse.Namespace], int],
    *,
    with_name: bool = True,
) -> None:
    command = actions.add_parser(name, help=help_text)
    _data_argument(command)
    if with_name:
        command.add_argument("name")
    else:
        command.add_argument("--json", action="store_true", help="JSON lines")
    command.set_defaults(run=run)


def _run_list(args: argparse.Namespace) -> int:
    with _registry(args.data) as registry:
        tenants = registry.all()
    for tenant in tenants:
        print(json.dumps(_tenant_json(tenant)) if args.json else _describe(tenant))
    return EXIT_OK


def _run_show(args: argparse.Namespace) -> int:
    with _registry(args.data) as registry:
        tenant = registry.get(args.name)
    print(json.dumps(_tenant_json(tenant), indent=2))
    return EXIT_OK


def _run_disable(args: argparse.Namespace) -> int:
    with _registry(args.data) as registry:
        tenant = registry.update(args.name, disabled=True)
    print(_describe(tenant))
    return EXIT_OK


def _run_enable(args: argparse.Namespace) -> int:
    with _registry(args.data) as registry:
        tenant = registry.update(args.name, disabled=False)
    print(_describe(tenant))
    return EXIT_OK


def _add_rotate_key(actions: Commands) -> None:
    command = actions.add_parser(
        "rotate-key", help="issue a new key; the old one expires or is revoked"
    )
    _data_argument(command)
    command.add_argument("name")
    ending = command.add_mutually_exclusive_group()
    ending.add_argument(
        "--old-key-hours",
        type=float,
        default=DEFAULT_OLD_KEY_SECONDS / 3600,
        help="how long the previous key stays valid (default 24)",
    )
    ending.add_argument(
        "--revoke-old",
        action="store_true",
        help="the previous keys stop working now (a stolen key)",
    )
    command.set_defaults(run=_run_rotate_key)


def _run_rotate_key(args: argparse.Namespace) -> int:
    with _registry(args.data) as registry:
        tenant, key = registry.rotate_key(
            args.name,
            old_valid_seconds=args.old_key_hours * 3600,
            revoke_old=args.revoke_old,
        )
    print(_describe(tenant))
    print("New API key, shown this once (only its digest is stored):")
    print(key)
    return EXIT_OK


def _add_set_limits(actions: Commands) -> None:
    command = actions.add_parser(
        "set-limits", help="change a tenant's lists, categories and limits"
    )
    _data_argument(command)
    command.add_argument("name")
    lists = command.add_mutually_exclusive_group()
    lists.add_argument("--lists", type=_names, help="L1,L2")
    lists.add_argument("--all-lists", action="store_true", help="every list")
    categories = command.add_mutually_exclusive_group()
    categories.add_argument("--categories", type=_names, help="C1,C2")
    categories.add_argument(
        "--all-categories", action="store_true", help="every category"
    )
    _allow_unknown_argument(command)
    operator = command.add_mutually_exclusive_group()
    operator.add_argument("--operator", action="store_true", default=None)
    operator.add_argument("--no-operator", dest="operator", action="store_false")
    _limit_arguments(command)
    command.set_defaults(run=_run_set_limits)


def _run_set_limits(args: argparse.Namespace) -> int:
    with _environment(args.data) as environment:
        registry = TenantRegistry(environment)
        tenant = registry.get(args.name)
        changes: dict[str, Any] = {"limits": _changed_limits(tenant.limits, args)}
        if args.lists is not None or args.all_lists:
            changes["lists"] = args.lists
        if args.categories is not None or args.all_categories:
            changes["categories"] = args.categories
        if "lists" in changes or "categories" in changes:
            # The scope the tenant ends up with; only newly named lists
            # must exist, so that other changes work after a retirement.
            _check_scope(
                environment,
                changes.get("lists", tenant.lists),
                changes.get("categories", tenant.categories),
                named_lists=args.lists or (),
                allow_unknown=args.allow_unknown_lists,
            )
        if args.operator is not None:
            changes["operator"] = args.operator
        if args.client_cert_name is not None:
            changes["client_cert_name"] = args.client_cert_name or None
        tenant = registry.update(args.name, **changes)
    print(_describe(tenant))
    return EXIT_OK


def _add_export(actions: Commands) -> None:
    command = actions.add_parser("export", help="print hits as JSON lines")
    _data_argument(command)
    command.add_argument(
        "--since", type=_parse_time, help="ISO time, e.g. 2026-05-01T00:00:00Z"
    )
    command.add_argument("--tenant", help="only this tenant's hits")
    command.add_argument("--audit", type=Path, help="default: DATA/audit")
    command.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    audit = AuditLog.open(args.audit or args.data / "audit", readonly=True)
    try:
        for entry in audit.entries(since=args.since, tenant=args.tenant):
            print(json.dumps(_entry_json(entry)))
    finally:
        audit.close()
    return EXIT_OK


def _add_prune(actions: Commands) -> None:
    command = actions.add_parser("prune", help="delete entries past retention")
    _data_argument(command)
    command.add_argument(
        "--older-than", type=float, required=True, metavar="DAYS", help="age in days"
    )
    command.add_argument("--audit", type=Path, help="default: DATA/audit")
    command.set_defaults(run=_run_prune)


def _run_prune(args: argparse.Namespace) -> int:
    if args.older_than < 0:
        raise HashCheckError("--older-than must be 0 days or more.")
    audit = AuditLog.open(args.audit or args.data / "audit")
    try:
        removed = audit.prune(time.time() - args.older_than * 86400)
    finally:
        audit.close()
    print(f"pruned {removed} audit entries older than {args.older_than:g} days")
    return EXIT_OK


@contextmanager
def _environment(data: Path, *, create: bool = False) -> Iterator[layout.Environment]:
    """The data directory, closed at the end of the block."""
    environment = layout.Environment(data, create=create)
    try:
        yield environment
    finally:
        environment.close()


@contextmanager
def _registry(data: Path, *, create: bool = False) -> Iterator[TenantRegistry]:
    """The data directory's tenant registry, closed at the end of the block."""
    with _environment(data, create=create) as environment:
        yield TenantRegistry(environment)


@dataclass(frozen=True)
class _StoredLists:
    """The lists a data directory holds: their kinds and the categories graded."""

    kinds: dict[str, str]
    categories: dict[str, set[str]]

    @classmethod
    def read(cls, environment: layout.Environment) -> _StoredLists:
        categories: dict[str, set[str]] = {}
        with environment.read() as transaction:
            records = layout.read_list_records(environment, transaction)
            for algorithm in Algorithm:
                # An empty membership is deleted, never stored, so each one
                # read grades at least one hash.
                for list_name, category, _ in layout.read_memberships(
                    environment, transaction, algorithm
                ):
                    categories.setdefault(list_name, set()).add(category)
        return cls({record.name: record.kind for record in records}, categories)

    def graded_by(self, lists: tuple[str, ...] | None) -> set[str]:
        """Every category that `lists` (None: every list) grade a hash."""
        names = self.categories if lists is None else lists
        return set().union(*(self.categories.get(name, set()) for name in names))


def _check_scope(
    environment: layout.Environment,
    lists: tuple[str, ...] | None,
    categories: tuple[str, ...] | None,
    *,
    named_lists: tuple[str, ...],
    allow_unknown: bool,
) -> None:
    """Refuse unknown `named_lists`; warn of a scope that can give no hits.

    `lists` and `categories` are the scope the tenant ends up with (None:
    every one); `named_lists` are those this command names, which must exist.
    """
    stored = _StoredLists.read(environment)
    _refuse_unknown_lists(stored, named_lists, allow_unknown)
    allow_lists = [
        name for name in lists or () if stored.kinds.get(name) == layout.ALLOW
    ]
    if allow_lists:
        _warn(f"{_quoted(allow_lists)} is an allow list: its hashes never hit.")
    graded = stored.graded_by(lists)
    unused = [category for category in categories or () if category not in graded]
    if unused:
        _warn(
            f"no list in the tenant's scope grades a hash {_quoted(unused)}, so "
            "that category gives it no hits; graded: "
            f"{_quoted(sorted(graded)) or 'nothing yet'}."
        )


def _refuse_unknown_lists(
    stored: _StoredLists, named: tuple[str, ...], allow_unknown: bool
) -> None:
    unknown = [name for name in named if name not in stored.kinds]
    if not unknown:
        return
    if not allow_unknown:
        raise UnknownList(
            f"The store holds no list named {_quoted(unknown)}; it holds "
            f"{_quoted(sorted(stored.kinds)) or 'no list yet'}. Check the "
            "spelling, or pass --allow-unknown-lists for a list to be imported "
            "later."
        )
    _warn(
        f"{_quoted(unknown)} not in the store yet: the tenant gets no hits "
        "from it until it is imported."
    )


def _quoted(names: list[str] | tuple[str, ...]) -> str:
    return ", ".join(repr(name) for name in names)


def _warn(message: str) -> None:
    print(f"hashcheck-server tenant: warning: {message}", file=sys.stderr)


def _changed_limits(limits: Limits, args: argparse.Namespace) -> Limits:
    """`limits` with the options given; 0 means no limit of the tenant's own."""
    changes: dict[str, Any] = {}
    for option, field_name in (
        ("max_batch", "max_batch_hashes"),
        ("rate", "hashes_per_second"),
        ("burst", "burst_hashes"),
        ("max_streams", "max_streams"),
    ):
        value = getattr(args, option)
        if value is None:
            continue
        if value < 0:
            raise HashCheckError(f"--{option.replace('_', '-')} must be 0 or more.")
        changes[field_name] = value or None
    return replace(limits, **changes)


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("name at least one, separated by commas")
    return names


def _parse_time(text: str) -> float:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is no ISO time; write e.g. 2026-05-01T00:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _describe(tenant: Tenant) -> str:
    limits = tenant.limits
    state = "disabled" if tenant.disabled else "enabled"
    role = ", operator" if tenant.operator else ""
    return (
        f"tenant {tenant.name} ({state}{role}): "
        f"lists {_or_all(tenant.lists)}, categories {_or_all(tenant.categories)}, "
        f"max batch {limits.max_batch_hashes or 'server'}, "
        f"rate {_rate(limits.hashes_per_second)}, "
        f"streams {limits.max_streams or 'unlimited'}, "
        f"{len(tenant.keys)} key(s)"
    )


def _or_all(names: tuple[str, ...] | None) -> str:
    return "all" if names is None else ",".join(names)


def _tenant_json(tenant: Tenant) -> dict[str, object]:
    """A tenant as operators see it: key ids and dates, never digests."""
    now = time.time()
    return {
        "name": tenant.name,
        "disabled": tenant.disabled,
        "operator": tenant.operator,
        "lists": tenant.lists,
        "categories": tenant.categories,
        "limits": {
            "max_batch_hashes": tenant.limits.max_batch_hashes,
            "hashes_per_second": tenant.limits.hashes_per_second,
            "burst_hashes": tenant.limits.burst_hashes,
            "max_streams": tenant.limits.max_streams,
        },
        "client_cert_name": tenant.client_cert_name,
        "keys": [
            {
                "id": key.key_id,
                "created_at": _iso(key.created_at),
                "expires_at": _iso(key.expires_at) if key.expires_at else None,
                "valid": key.is_valid(now),
            }
            for key in tenant.keys
        ],
        "created_at": _iso(tenant.created_at),
        "updated_at": _iso(tenant.updated_at),
    }


def _entry_json(entry: AuditEntry) -> dict[str, object]:
    exported: dict[str, object] = {
        "time": _iso(entry.time),
        "tenant": entry.tenant,
        "algorithm": entry.algorithm,
        "hash": entry.hash,
        "lists": sorted({name for name, _ in entry.lists}),
        "matches": [{"list": n, "category": c} for n, c in entry.lists],
        "request_id": entry.request_id,
        "peer": entry.peer,
        "generation": entry.generation,
        "sequence": entry.sequence,
    }
    if entry.distance is not None:
        exported["distance"] = entry.distance
    return exported


def _rate(hashes_per_second: float | None) -> str:
    return f"{hashes_per_second:g}/s" if hashes_per_second else "unlimited"
