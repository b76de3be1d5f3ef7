"""Pull a whole plan: entries in parallel, then aliases, then the lock.

The lock always describes the tree: it is written after every run, also an
interrupted one, from what this run wrote plus the previous records of what it
did not touch.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from hps.pull.errors import Changed, Drift, InputError, NotWasm, PullError
from hps.pull.fetch import Options, fetch_to
from hps.pull.gate import Gate
from hps.pull.lock import Record, write_lock
from hps.pull.progress import Progress, human
from hps.pull.properties import Entry, Key, Plan
from hps.pull.tree import (
    link_module,
    module_path,
    read_local,
    refresh_gzip,
    refuse_change,
    remove_temporaries,
)

THREAD_PREFIX = "hps-pull"


@dataclass
class Settings:
    """What one ``hps pull`` does: where to, with which lock, how many at once, and how to
    talk to registries (``fetch``: the same :class:`Options` every fetch takes)."""

    output: Path
    lock: Path | None  # None: write no lock (snapshot mode: the inputs are the locks)
    locked: bool = False
    use_local: bool = False
    replace: bool = False  # overwrite a version the tree serves with other bytes
    jobs: int = 4
    fetch: Options = field(default_factory=Options)

    def options(self, progress: Progress, gate: Gate) -> Options:
        """``fetch`` for this run: bytes counted by ``progress``, writes through ``gate``."""
        return replace(self.fetch, on_bytes=progress.received, gate=gate)


@dataclass
class Outcome:
    records: dict[Key, Record] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # "name/version": why
    interrupted: bool = False


def check_locked(plan: Plan, previous: dict[Key, Record]) -> None:
    """``--locked``: the inputs and the lock must name the same modules, found before pulling."""
    problems = []
    for key, entry in sorted(plan.entries.items()):
        record = previous.get(key)
        if record is None:
            problems.append(f"{entry.label}: not in the lock")
        elif record.reference != str(entry.ref):
            problems.append(
                f"{entry.label}: reference is {entry.ref}, the lock says {record.reference}"
            )
        elif not record.manifest_digest:
            problems.append(f"{entry.label}: the lock has no manifest digest (it was kept local)")
    problems += [
        f"{n}/{v}: in the lock, not in the inputs"
        for n, v in sorted(set(previous) - set(plan.entries))
    ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(f"--locked: {problems[0]}{more}; pull without --locked to update the lock")


def run(plan: Plan, settings: Settings, previous: dict[Key, Record], progress: Progress) -> Outcome:
    beside_lock = [settings.lock.parent] if settings.lock else []
    for leftover in remove_temporaries(settings.output, *beside_lock):
        progress.note(f"removed {leftover}, left by an interrupted pull")
    outcome = _pull_all(plan, settings, previous, progress)
    _link_aliases(plan, settings.output, outcome, settings.replace)
    if settings.lock and not settings.locked:
        kept = {k: r for k, r in previous.items() if k in plan.entries and k not in outcome.records}
        write_lock(settings.lock, {**kept, **outcome.records})
    return outcome


def _pull_all(
    plan: Plan, settings: Settings, previous: dict[Key, Record], progress: Progress
) -> Outcome:
    outcome = Outcome()
    gate = Gate()
    options = settings.options(progress, gate)
    pool = ThreadPoolExecutor(max_workers=settings.jobs, thread_name_prefix=THREAD_PREFIX)
    futures: dict[Key, Future] = {
        key: pool.submit(_guarded, entry, previous.get(key), settings, options, progress)
        for key, entry in plan.entries.items()
    }
    try:
        for future in futures.values():
            future.result()
    except KeyboardInterrupt:
        outcome.interrupted = True
        # A second Ctrl-C must not cut this short: what was written must reach the lock.
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            _abandon(settings.output, futures, gate, progress)
        finally:
            signal.signal(signal.SIGINT, handler)
        pool.shutdown(wait=False, cancel_futures=True)
    else:
        pool.shutdown(wait=True)
    for key, future in futures.items():
        if future.done() and not future.cancelled():
            record, failure = future.result()
            if record:
                outcome.records[key] = record
            else:
                outcome.failures[plan.entries[key].label] = failure
    return outcome


def _abandon(output: Path, futures: dict[Key, Future], gate: Gate, progress: Progress) -> None:
    """Shut the gate, then wait only for the entries whose module it let through."""
    gate.shut()
    for key, future in futures.items():
        if module_path(output, *key) in gate.written:
            future.result()  # written: only its record is still being made
    left = sum(not f.done() for f in futures.values())
    progress.note(f"interrupted: {left} download(s) abandoned, none of them written")


def _guarded(
    entry: Entry, previous: Record | None, settings: Settings, options: Options,
    progress: Progress,
) -> tuple[Record | None, str]:
    """One entry's failure is one line, never a traceback or a stopped run."""
    progress.started(entry.label)
    try:
        record = pull_one(entry, previous, settings, options, progress)
    except PullError as exc:
        failure = str(exc)
    except OSError as exc:
        failure = f"cannot write the tree: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
    except Exception as exc:  # reported as one line, like every failure
        failure = f"unexpected {type(exc).__name__}: {exc}"
    else:
        progress.finished(entry.label, _describe(entry, record))
        return record, ""
    progress.finished(entry.label, failure, ok=False)
    return None, failure


def _describe(entry: Entry, record: Record) -> str:
    how = "kept local" if record.source == "local" else "pulled"
    size = human(record.size)
    return f"{how} {entry.name} {entry.version} ({size}, sha256:{record.wasm_sha256[:12]})"


def pull_one(
    entry: Entry, previous: Record | None, settings: Settings, options: Options,
    progress: Progress,
) -> Record:
    locked = previous if settings.locked else None  # check_locked made sure it exists
    if settings.use_local:
        local = _usable_local(entry, settings.output, progress)
        if local:
            refresh_gzip(settings.output, entry.name, entry.version)
            return _local_record(entry, local, previous, locked)
    if locked and not locked.manifest_digest:
        raise Drift("the lock has no manifest digest (it was kept local); pull without --locked")
    ref, pin, layer_pin = entry.ref, entry.pin, None
    if locked:
        # By the locked digest: a tag moved upstream does not matter.
        ref = replace(entry.ref, tag=None, digest=locked.manifest_digest)
        pin, layer_pin = locked.manifest_digest, locked.layer_digest
    fetched = fetch_to(
        ref,
        module_path(settings.output, entry.name, entry.version),
        options,
        pin=pin,
        layer_pin=layer_pin,
        expect_sha256=locked.wasm_sha256 if locked else entry.sha256,
        root=settings.output,
        replace=settings.replace,
    )
    return Record(
        str(entry.ref),
        fetched.manifest_digest,
        fetched.layer_digest,
        fetched.sha256,
        fetched.size,
        [entry.version, *entry.aliases],
    )


def _usable_local(entry: Entry, root: Path, progress: Progress) -> tuple[int, str] | None:
    """A valid local module, or None; a corrupt one is downloaded again, as upstream does."""
    try:
        return read_local(root, entry.name, entry.version)
    except NotWasm as exc:
        progress.note(f"{entry.label}: {exc}; downloading it again")
        return None


def _local_record(
    entry: Entry, local: tuple[int, str], previous: Record | None, locked: Record | None
) -> Record:
    size, sha = local
    if locked and sha != locked.wasm_sha256:
        raise Drift(f"local {entry.label} has sha256 {sha}, the lock says {locked.wasm_sha256}")
    same = previous is not None and previous.wasm_sha256 == sha
    return Record(
        str(entry.ref),
        previous.manifest_digest if same else None,
        previous.layer_digest if same else None,
        sha,
        size,
        [entry.version, *entry.aliases],
        source="local",
    )


def _link_aliases(plan: Plan, root: Path, outcome: Outcome, replace: bool = False) -> None:
    for (name, version), record in outcome.records.items():
        for alias in record.versions[1:]:
            try:
                _link(root, (name, alias), (name, version), record.wasm_sha256, replace)
            except (OSError, Changed) as exc:
                outcome.failures[f"{name}/{alias}"] = _link_failure(exc)
        record.versions = [v for v in record.versions if f"{name}/{v}" not in outcome.failures]
    for alias in plan.name_aliases.values():
        for version, target_version in alias.links:
            target = outcome.records.get((alias.target, target_version))
            label = f"{alias.name}/{version}"
            if target is None:
                outcome.failures[label] = (
                    f"not served: {alias.target}/{target_version} was not pulled"
                )
                continue
            try:
                _link(root, (alias.name, version), (alias.target, target_version),
                      target.wasm_sha256, replace)
            except (OSError, Changed) as exc:
                outcome.failures[label] = _link_failure(exc)
                continue
            target.served_as.setdefault(alias.name, []).append(version)


def _link(root: Path, alias: Key, target: Key, sha256: str, replace: bool) -> None:
    """An alias is a URL too: it changes bytes only when asked (``--replace``)."""
    if not replace:
        refuse_change(module_path(root, *alias), sha256)
    link_module(root, *alias, *target)


def _link_failure(exc: OSError | Changed) -> str:
    if isinstance(exc, Changed):
        return str(exc)
    return f"cannot link alias: {exc.strerror or exc}"


def default_jobs() -> int:
    return max(1, min(4, (os.cpu_count() or 1) * 2))
