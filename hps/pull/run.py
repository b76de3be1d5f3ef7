"""Pull a whole plan: entries in parallel, then aliases, then the lock."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from hps.guard import accept_version
from hps.pull.auth import Credentials, from_docker_config
from hps.pull.errors import Drift, PullError
from hps.pull.lock import Record, write_lock
from hps.pull.progress import Progress, human
from hps.pull.properties import Entry, Plan
from hps.pull.registry import Client, Module
from hps.pull.tree import link_module, read_local, write_module


@dataclass
class Settings:
    output: Path
    lock: Path
    locked: bool = False
    use_local: bool = False
    plain_http: bool = False
    jobs: int = 4
    retries: int = 3
    timeout: float = 30.0
    credentials: Credentials | None = None  # from flags/env; else ~/.docker/config.json


@dataclass
class Outcome:
    records: dict[str, Record] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def run(plan: Plan, settings: Settings, previous: dict[str, Record], progress: Progress) -> Outcome:
    outcome = Outcome()
    for name, (record, failure) in _pull_all(plan, settings, previous, progress).items():
        if record:
            outcome.records[name] = record
        else:
            outcome.failures[name] = failure
    _link_aliases(plan, settings.output, outcome)
    if not settings.locked:
        kept = {n: r for n, r in previous.items() if n in outcome.failures and n in plan.entries}
        write_lock(settings.lock, {**kept, **outcome.records})
    return outcome


def _pull_all(
    plan: Plan, settings: Settings, previous: dict[str, Record], progress: Progress
) -> dict[str, tuple[Record | None, str]]:
    pool = ThreadPoolExecutor(max_workers=settings.jobs, thread_name_prefix="pull")
    try:
        futures = {
            name: pool.submit(_guarded, entry, previous.get(name), settings, progress)
            for name, entry in plan.entries.items()
        }
        return {name: future.result() for name, future in futures.items()}
    finally:
        # On Ctrl-C, start nothing new; pulls under way finish or clean up their temp file.
        pool.shutdown(wait=True, cancel_futures=True)


def _guarded(
    entry: Entry, previous: Record | None, settings: Settings, progress: Progress
) -> tuple[Record | None, str]:
    """One entry's failure is one line, never a traceback or a stopped run."""
    progress.started(entry.name)
    try:
        record = pull_one(entry, previous, settings, progress)
    except PullError as exc:
        failure = str(exc)
    except OSError as exc:
        failure = f"cannot write the tree: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
    except Exception as exc:  # reported as one line, like every failure
        failure = f"unexpected {type(exc).__name__}: {exc}"
    else:
        progress.finished(entry.name, _describe(entry.name, record))
        return record, ""
    progress.finished(entry.name, failure, ok=False)
    return None, failure


def _describe(name: str, record: Record) -> str:
    how = "kept local" if record.source == "local" else "pulled"
    size = human(record.size)
    return f"{how} {name} {record.versions[0]} ({size}, sha256:{record.wasm_sha256[:12]})"


def pull_one(
    entry: Entry, previous: Record | None, settings: Settings, progress: Progress
) -> Record:
    locked = _locked_record(entry, previous) if settings.locked else None
    version = entry.version or (locked.versions[0] if locked else None)
    if settings.use_local and version:
        local = read_local(settings.output, entry.name, version)
        if local:
            return _local_record(entry, version, local, previous, locked)
    if locked and not locked.manifest_digest:
        raise Drift("the lock has no manifest digest (it was kept local); pull without --locked")
    module = _fetch(entry, locked, settings, progress)
    with module.file:
        version = version or _annotated_version(module)
        if locked and module.sha256 != locked.wasm_sha256:
            raise Drift(
                f"module sha256 {module.sha256} differs from the lock's {locked.wasm_sha256}"
            )
        write_module(settings.output, entry.name, version, module.file)
    return Record(
        str(entry.ref),
        module.manifest_digest,
        module.layer_digest,
        module.sha256,
        module.size,
        [version, *entry.aliases],
    )


def _locked_record(entry: Entry, previous: Record | None) -> Record:
    if previous is None:
        raise Drift("not in the lock; pull without --locked to add it")
    if previous.reference != str(entry.ref):
        raise Drift(f"reference is {entry.ref}, the lock says {previous.reference}")
    return previous


def _local_record(
    entry: Entry,
    version: str,
    local: tuple[int, str],
    previous: Record | None,
    locked: Record | None,
) -> Record:
    size, sha = local
    if locked and sha != locked.wasm_sha256:
        raise Drift(
            f"local {entry.name}/{version} has sha256 {sha}, the lock says {locked.wasm_sha256}"
        )
    same = previous is not None and previous.wasm_sha256 == sha
    return Record(
        str(entry.ref),
        previous.manifest_digest if same else None,
        previous.layer_digest if same else None,
        sha,
        size,
        [version, *entry.aliases],
        source="local",
    )


def _fetch(entry: Entry, locked: Record | None, settings: Settings, progress: Progress) -> Module:
    ref = entry.ref
    client = Client(
        ref.registry,
        ref.repository,
        plain_http=settings.plain_http,
        credentials=settings.credentials or from_docker_config(ref.registry),
        timeout=settings.timeout,
        retries=settings.retries,
        on_bytes=progress.received,
    )
    if locked:
        digest = locked.manifest_digest or ""
        return client.fetch_module(digest, pin=digest, layer_pin=locked.layer_digest)
    return client.fetch_module(ref.tag or ref.digest or "", pin=entry.pin)


def _annotated_version(module: Module) -> str:
    if module.version is None:
        raise PullError("pinned by digest and no version known: set 'version' in the manifest")
    if not accept_version(module.version):
        raise PullError(f"annotated version {module.version!r} is not a usable version")
    return module.version


def _link_aliases(plan: Plan, root: Path, outcome: Outcome) -> None:
    for name, record in list(outcome.records.items()):
        try:
            for alias in record.versions[1:]:
                link_module(root, name, alias, name, record.versions[0])
        except OSError as exc:
            outcome.failures[name] = f"cannot link alias: {exc.strerror or exc}"
            del outcome.records[name]
    for alias in plan.name_aliases.values():
        target = outcome.records.get(alias.target)
        if target is None:
            outcome.failures[alias.name] = f"not served: {alias.target} was not pulled"
            continue
        try:
            for version in alias.versions:
                link_module(root, alias.name, version, alias.target, target.versions[0])
        except OSError as exc:
            outcome.failures[alias.name] = f"cannot link alias: {exc.strerror or exc}"
            continue
        target.served_as[alias.name] = list(alias.versions)


def default_jobs() -> int:
    return max(1, min(4, (os.cpu_count() or 1) * 2))
