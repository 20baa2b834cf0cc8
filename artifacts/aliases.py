"""Model references, aliases and version lifecycle, kept in MLMD.

A model reference is ``name`` (the latest servable version), ``name:version`` or
``name@alias``. Aliases (``champion``, ``challenger``, …) and deprecated/archived versions are
the properties of one MLMD context per model name (type ``kfp_serve.ModelAliases``). Every
change is one ``put_execution`` call, under the store's write lock: it upserts that context with
the new alias map and records a ``kfp_serve.AliasChange`` execution (who, when, which version it
moved from and to, with an INPUT event on the version's artifact) associated with the context.
MLMD runs a ``put_execution`` in one database transaction, so an alias never points half-way
and the history never misses a move; the lock makes the read-modify-write safe against a
concurrent mover::

    set_alias("iris", "champion", "2.0.0")
    resolve("iris@champion").version            # "2.0.0"
    previous_version("iris", "champion")         # "1.0.0", the champion before
    archive("iris", "1.0.0", reason="leaks labels")
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kfp_serve.artifacts.errors import MetadataError
from kfp_serve.artifacts.metadata import MetadataStore, current_run, metadata_store
from kfp_serve.artifacts.mlmd import (
    ALIAS_CHANGE_EXECUTION,
    ALIASES_CONTEXT,
    MODEL_TYPE,
    completed_execution,
    get_value,
)
from kfp_serve.artifacts.names import validate_name, validate_version
from kfp_serve.artifacts.records import (
    ArtifactRecord,
    _live,
    _version_key,
    find_artifact,
    mlmd_name,
    to_record,
)

#: Environment variable naming who moves an alias (default: the login name).
AUTHOR_ENV = "KFP_SERVE_USER"

# Context properties (JSON objects).
_ALIASES = "aliases"  # {alias: version}
_LIFECYCLE = "lifecycle"  # {version: {"state": ..., "author": ..., "time": ..., "reason": ...}}

# AliasChange.action values.
SET = "set"
DEPRECATE = "deprecate"
ARCHIVE = "archive"
#: Lifecycle states that make a version unservable.
UNSERVABLE = {DEPRECATE: "deprecated", ARCHIVE: "archived"}

ALIAS_SEPARATOR = "@"
VERSION_SEPARATOR = ":"



class UnservableVersionError(MetadataError):
    """The version was deprecated or archived: it may no longer be served."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: exactly one of ``version`` and ``alias`` may be set."""

    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.alias:
            return f"{self.name}{ALIAS_SEPARATOR}{self.alias}"
        if self.version:
            return f"{self.name}{VERSION_SEPARATOR}{self.version}"
        return self.name


@dataclass(frozen=True)
class ResolvedModel:
    """What a model reference points at now.

    Attributes:
        ref: The reference as given.
        record: The model version's MLMD record (``record.id`` is what ``serve()`` takes).
        alias: The alias it was reached through, else None.
    """

    ref: ModelRef
    record: ArtifactRecord
    alias: str | None = None

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def version(self) -> str:
        return self.record.version

    @property
    def artifact_id(self) -> int:
        return self.record.id


@dataclass(frozen=True)
class AliasChange:
    """One entry of a model's alias/lifecycle history."""

    model: str
    action: str
    version: str
    alias: str | None
    previous_version: str | None
    author: str
    run_id: str
    reason: str
    time: datetime


def parse_ref(ref: str) -> ModelRef:
    """Parse ``name``, ``name:version`` or ``name@alias``.

    Raises:
        MetadataError: the reference is malformed (the message shows the three forms).
    """
    if not isinstance(ref, str) or not ref:
        raise MetadataError(
            f"model reference must be a non-empty string, got {ref!r}: use 'iris', "
            "'iris:2.0.0' or 'iris@champion'"
        )
    if ALIAS_SEPARATOR in ref and VERSION_SEPARATOR in ref:
        raise MetadataError(
            f"model reference {ref!r} names both an alias and a version: use 'name@alias' or "
            "'name:version'"
        )
    if ALIAS_SEPARATOR in ref:
        name, _, alias = ref.partition(ALIAS_SEPARATOR)
        return ModelRef(validate_name(name, "model name"), alias=validate_name(alias, "alias"))
    if VERSION_SEPARATOR in ref:
        name, _, version = ref.partition(VERSION_SEPARATOR)
        return ModelRef(validate_name(name, "model name"), version=validate_version(version))
    return ModelRef(validate_name(ref, "model name"))


def is_ref(value: object) -> bool:
    """True if ``value`` is a string meant as a model reference (not an id or an object)."""
    return isinstance(value, str) and not value.isdigit()


# -- the MLMD side -------------------------------------------------------------------------------


def _store(store: MetadataStore | None) -> MetadataStore:
    return store if store is not None else metadata_store()


def _context(store: MetadataStore, name: str) -> Any | None:
    # Context reads are not in the MetadataStore protocol yet: the MLMD call, through the
    # store's retries and error mapping.
    return store.call(  # type: ignore[attr-defined]
        "get_context_by_type_and_name", ALIASES_CONTEXT, name
    )


def _props(ctx: Any | None) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    if ctx is None:
        return {}, {}
    aliases = json.loads(get_value(ctx.properties, _ALIASES, "") or "{}")
    lifecycle = json.loads(get_value(ctx.properties, _LIFECYCLE, "") or "{}")
    return aliases, lifecycle


def _author(author: str | None) -> str:
    if author:
        return author
    try:
        return os.environ.get(AUTHOR_ENV) or getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without /etc/passwd entry)
        return "unknown"


def _version_artifact(store: MetadataStore, name: str, version: str) -> Any:
    artifact = store.get_artifact_by_type_and_name(MODEL_TYPE, mlmd_name(name, version))
    if artifact is None:
        known = _versions(store, name)
        raise MetadataError(
            f"model {name!r} has no version {version!r}; its versions: "
            f"{', '.join(known) or 'none (submit one with Model(...).submit_artifact())'}"
        )
    return artifact


def _versions(store: MetadataStore, name: str) -> list[str]:
    arts = _live(store, MODEL_TYPE, name)
    return sorted(
        {get_value(a.properties, "version", "") for a in arts}, key=_version_key, reverse=True
    )


def _write(
    store: MetadataStore,
    name: str,
    ctx: Any | None,
    aliases: dict[str, str],
    lifecycle: dict[str, dict[str, str]],
    artifact: Any,
    change: dict[str, str],
) -> AliasChange:
    """One put_execution: the context with its new properties, the change and its event."""
    pb = store.pb
    context = pb.Context(type_id=store.type_id(ALIASES_CONTEXT), name=name)
    if ctx is not None:
        context.id = ctx.id
    for key, value in {"model": name, _ALIASES: aliases, _LIFECYCLE: lifecycle}.items():
        context.properties[key].string_value = json.dumps(value, sort_keys=True)
    execution = completed_execution(store, ALIAS_CHANGE_EXECUTION, change)
    event = pb.Event(type=pb.Event.INPUT)
    execution_id, _, _ = store.put_execution(execution, [(artifact, event)], [context])
    [stored] = store.get_executions_by_id([execution_id])
    return _to_change(stored, name)


def _to_change(execution: Any, name: str) -> AliasChange:
    p = execution.properties
    return AliasChange(
        model=get_value(p, "model", name),
        action=get_value(p, "action", ""),
        version=get_value(p, "version", ""),
        alias=get_value(p, "alias") or None,
        previous_version=get_value(p, "previous_version") or None,
        author=get_value(p, "author", ""),
        run_id=get_value(p, "run_id", ""),
        reason=get_value(p, "reason", ""),
        time=datetime.fromtimestamp(execution.create_time_since_epoch / 1000, tz=UTC),
    )


def _change(name: str, action: str, version: str, author: str | None, **extra: str) -> dict:
    return {
        "model": name,
        "action": action,
        "version": version,
        "author": _author(author),
        "run_id": current_run().run_id,
        **{k: v for k, v in extra.items() if v},
    }


# -- public API ----------------------------------------------------------------------------------


def set_alias(
    name: str,
    alias: str,
    version: str,
    *,
    author: str | None = None,
    reason: str = "",
    store: MetadataStore | None = None,
) -> AliasChange:
    """Point ``name@alias`` at ``version`` (creating the alias or moving it), atomically.

    Args:
        name: The model name.
        alias: A DNS-1123 label, e.g. "champion".
        version: An existing, servable version of the model.
        author: Who moves it (default: $KFP_SERVE_USER, else the login name).
        reason: Why, kept in the history.

    Raises:
        MetadataError: no such version; UnservableVersionError if it is deprecated/archived.
    """
    validate_name(name, "model name")
    validate_name(alias, "alias")
    validate_version(version)
    store = _store(store)
    with store.write():
        ctx = _context(store, name)
        aliases, lifecycle = _props(ctx)
        artifact = _version_artifact(store, name, version)
        _check_servable(store, name, version, lifecycle)
        previous = aliases.get(alias)
        aliases[alias] = version
        change = _change(
            name, SET, version, author, alias=alias, previous_version=previous or "", reason=reason
        )
        return _write(store, name, ctx, aliases, lifecycle, artifact, change)


def list_aliases(name: str, *, store: MetadataStore | None = None) -> dict[str, str]:
    """The model's aliases and the versions they point at now."""
    validate_name(name, "model name")
    store = _store(store)
    with store.read():
        return dict(sorted(_props(_context(store, name))[0].items()))


def alias_history(
    name: str, *, alias: str | None = None, store: MetadataStore | None = None
) -> list[AliasChange]:
    """Every alias move and lifecycle change of the model (or of one alias), oldest first."""
    validate_name(name, "model name")
    store = _store(store)
    with store.read():
        ctx = _context(store, name)
        executions = (
            store.call("get_executions_by_context", ctx.id)  # type: ignore[attr-defined]
            if ctx is not None
            else []
        )
    changes = [_to_change(e, name) for e in sorted(executions, key=lambda e: e.id)]
    return [c for c in changes if alias is None or c.alias == alias]


def previous_version(name: str, alias: str, *, store: MetadataStore | None = None) -> str | None:
    """The version ``name@alias`` pointed at before its last move (None if it never moved)."""
    moves = [c for c in alias_history(name, alias=alias, store=store) if c.action == SET]
    return moves[-1].previous_version if moves else None


def deprecate(name: str, version: str, **kwargs: Any) -> AliasChange:
    """Mark a version deprecated: it can no longer be served or aliased (its record stays)."""
    return _retire(name, version, DEPRECATE, **kwargs)


def archive(name: str, version: str, **kwargs: Any) -> AliasChange:
    """Mark a version archived: it can no longer be served or aliased (its record stays)."""
    return _retire(name, version, ARCHIVE, **kwargs)


def _retire(
    name: str,
    version: str,
    action: str,
    *,
    author: str | None = None,
    reason: str = "",
    store: MetadataStore | None = None,
) -> AliasChange:
    validate_name(name, "model name")
    validate_version(version)
    store = _store(store)
    with store.write():
        ctx = _context(store, name)
        aliases_now, lifecycle = _props(ctx)
        artifact = _version_artifact(store, name, version)
        pointing = sorted(a for a, v in aliases_now.items() if v == version)
        if pointing:
            raise MetadataError(
                f"{name}:{version} is what {', '.join(f'{name}@{a}' for a in pointing)} "
                f"point(s) at; move the alias first (set_alias({name!r}, {pointing[0]!r}, "
                "'<other version>')), then mark it " + UNSERVABLE[action]
            )
        change = _change(name, action, version, author, reason=reason)
        lifecycle[version] = {
            "state": UNSERVABLE[action],
            "author": change["author"],
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "reason": reason,
        }
        return _write(store, name, ctx, aliases_now, lifecycle, artifact, change)


def _check_servable(
    store: MetadataStore, name: str, version: str, lifecycle: dict[str, dict[str, str]]
) -> None:
    entry = lifecycle.get(version)
    if entry is None:
        return
    latest = _latest_servable(store, name, lifecycle)
    why = f" ({entry['reason']})" if entry.get("reason") else ""
    raise UnservableVersionError(
        f"model {name}:{version} was {entry['state']} by {entry.get('author', '?')} at "
        f"{entry.get('time', '?')}{why} and can no longer be served; the latest servable "
        f"version is "
        + (f"{name}:{latest}" if latest else "none (submit a new version)")
    )


def ensure_servable(name: str, version: str, *, store: MetadataStore | None = None) -> None:
    """Raise UnservableVersionError if ``name:version`` was deprecated or archived."""
    store = _store(store)
    with store.read():
        _check_servable(store, name, version, _props(_context(store, name))[1])


def _latest_servable(
    store: MetadataStore, name: str, lifecycle: dict[str, dict[str, str]]
) -> str | None:
    return next((v for v in _versions(store, name) if v not in lifecycle), None)


def resolve(ref: str | ModelRef, *, store: MetadataStore | None = None) -> ResolvedModel:
    """The model version a reference points at now.

    ``name`` is the latest version that is neither deprecated nor archived; ``name:version``
    that exact version; ``name@alias`` the version the alias points at.

    Raises:
        MetadataError: unknown name, version or alias (the message lists the model's
            versions or aliases); UnservableVersionError if the version is retired.
    """
    parsed = ref if isinstance(ref, ModelRef) else parse_ref(ref)
    store = _store(store)
    with store.read():
        alias_map, lifecycle = _props(_context(store, parsed.name))
        version = parsed.version
        if parsed.alias is not None:
            version = alias_map.get(parsed.alias)
            if version is None:
                known = ", ".join(f"{parsed.name}@{a}" for a in sorted(alias_map)) or (
                    f"none (set one with set_alias({parsed.name!r}, {parsed.alias!r}, "
                    "'<version>'))"
                )
                raise MetadataError(
                    f"model {parsed.name!r} has no alias {parsed.alias!r}; its aliases: {known}"
                )
        elif version is None:
            version = _latest_servable(store, parsed.name, lifecycle)
            if version is None and _versions(store, parsed.name):
                raise UnservableVersionError(
                    f"every version of model {parsed.name!r} is deprecated or archived "
                    f"({', '.join(sorted(lifecycle))}); submit a new version to serve it"
                )
        if version is not None:
            _check_servable(store, parsed.name, version, lifecycle)
            artifact = store.get_artifact_by_type_and_name(
                MODEL_TYPE, mlmd_name(parsed.name, version)
            )
            if artifact is not None:
                return ResolvedModel(parsed, to_record(store, artifact), parsed.alias)
    # Unknown name or version: find_artifact's message lists what exists.
    find_artifact(parsed.name, version, kind="model", store=store)
    raise MetadataError(f"model {str(parsed)!r} is not in {store.uri!r}")  # pragma: no cover
