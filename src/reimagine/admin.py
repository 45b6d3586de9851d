"""`reimagine requests list|show|cancel|requeue|purge` and `reimagine queue stats|pause|resume`: the operator's CLI.

They work on the store a `serve` uses (`--data-dir`, or `--database-url` for PostgreSQL), over every key, and refuse
a store that does not exist (`cli.open_existing_store`). Output is text for people; `--json` where scripts read it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from reimagine.config import Settings
from reimagine.errors import ConfigError
from reimagine.jobs import JobStatus
from reimagine.queue.models import CancelOutcome, Job

__all__ = ["add_commands", "parse_duration", "run"]

#: What the admin commands read of the settings: where the store (and, for `purge`, the files) live.
SETTINGS = (
    "data_dir",
    "database_url",
    "storage",
    "s3_endpoint_url",
    "s3_bucket",
    "s3_prefix",
    "max_attempts",
    "log_level",
)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in `90`, `90s`, `15m`, `12h`, `7d` or `2w`."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (like 90s, 15m, 12h, 7d)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def _since(text: str) -> float:
    """An epoch time from a duration ago (`2h`) or a UTC date/time (`2026-12-04`, `2026-12-04T18:00`)."""
    try:
        return time.time() - parse_duration(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration or a date: {text!r} (like 2h, 7d, 2026-12-04)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def add_commands(commands: Any, add_settings: Any) -> None:
    """Add `requests` and `queue` to the CLI; `add_settings(parser)` adds the store flags."""
    requests = commands.add_parser("requests", help="Inspect and manage requests of every key (operators)")
    actions = requests.add_subparsers(dest="requests_command", required=True)
    listing = actions.add_parser("list", help="Requests, newest first")
    listing.add_argument("--status", choices=[s.value for s in JobStatus], help="Only requests in this state")
    listing.add_argument("--key", default=None, metavar="KEY_ID", help="Only this key's requests")
    listing.add_argument(
        "--since", type=_since, default=None, metavar="AGE|DATE", help="Created since (2h, 2026-12-04)"
    )
    listing.add_argument("--limit", type=int, default=50, help="At most this many (default: 50)")
    listing.add_argument("--json", action="store_true", help="One JSON object per line")
    show = actions.add_parser("show", help="One request: its fields, result and events")
    show.add_argument("request_id")
    cancel = actions.add_parser("cancel", help="Cancel a request (a running one stops at its next step)")
    cancel.add_argument("request_id")
    requeue = actions.add_parser("requeue", help="Run a FAILED (or poisoned) request's input again, as a new request")
    requeue.add_argument("request_id")
    purge = actions.add_parser("purge", help="Delete finished requests and their files")
    purge.add_argument(
        "--older-than", type=parse_duration, required=True, metavar="AGE", help="Finished longer ago than this (7d)"
    )
    for sub in (listing, show, cancel, requeue, purge):
        add_settings(sub)

    queue = commands.add_parser("queue", help="The queue as a whole (operators)")
    queue_actions = queue.add_subparsers(dest="queue_command", required=True)
    stats = queue_actions.add_parser("stats", help="Depth by priority, running, oldest waiting, per-key counts")
    stats.add_argument("--json", action="store_true", help="As one JSON object")
    pause = queue_actions.add_parser("pause", help="Workers finish what they run and start nothing new")
    resume = queue_actions.add_parser("resume", help="Workers start claiming again")
    for sub in (stats, pause, resume):
        add_settings(sub)


def run(settings: Settings, namespace: argparse.Namespace, store: Any) -> int:
    if namespace.command == "requests":
        return _requests(settings, namespace, store)
    return _queue(namespace, store)


def _requests(settings: Settings, namespace: argparse.Namespace, store: Any) -> int:
    command = namespace.requests_command
    if command == "list":
        status = JobStatus(namespace.status) if namespace.status else None
        jobs = store.admin.list_jobs(status=status, key_id=namespace.key, since=namespace.since, limit=namespace.limit)
        for job in jobs:
            if namespace.json:
                print(json.dumps(_summary(job)))
            else:
                print(f"{job.id}\t{job.status.value}\t{job.key_id}\t{_when(job.created_at)}\t{job.error_type or ''}")
        return 0
    if command == "show":
        job = store.get(namespace.request_id)
        if job is None:
            return _not_found(namespace.request_id)
        body = {**_details(job), "events": [asdict(event) for event in store.events(job.id)]}
        print(json.dumps(body, indent=2, default=str))
        return 0
    if command == "cancel":
        outcome = store.request_cancel(namespace.request_id, None)
        if outcome == CancelOutcome.NOT_FOUND:
            return _not_found(namespace.request_id)
        print(f"{namespace.request_id}: {outcome.value}")
        return 0 if outcome != CancelOutcome.ALREADY_COMPLETED else 1
    if command == "requeue":
        try:
            job = store.admin.requeue(namespace.request_id)
        except KeyError:
            return _not_found(namespace.request_id)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(job.id)
        return 0
    if command == "purge":
        from reimagine.storage import open_storage

        storage = open_storage(settings)
        keys = store.admin.purge(time.time() - namespace.older_than)
        for key in keys:
            storage.delete(key)
        print(f"purged finished requests older than {namespace.older_than:g}s and {len(keys)} file(s)")
        return 0
    raise ConfigError(f"unknown requests command {command!r}")


def _queue(namespace: argparse.Namespace, store: Any) -> int:
    command = namespace.queue_command
    if command == "pause":
        changed = store.admin.pause()
        print("paused: running jobs finish, no new job starts, submits still queue" if changed else "already paused")
        return 0
    if command == "resume":
        print("resumed" if store.admin.resume() else "was not paused")
        return 0
    stats = store.admin.stats()
    if namespace.json:
        print(json.dumps({**asdict(stats), "queued": stats.queued}))
        return 0
    print(f"paused: {'since ' + _when(stats.paused_at) if stats.paused_at is not None else 'no'}")
    by_priority = ", ".join(f"priority {p}: {n}" for p, n in stats.queued_by_priority.items())
    print(f"queued: {stats.queued}" + (f" ({by_priority})" if by_priority else ""))
    print(f"running: {stats.running}")
    if stats.oldest_queued_at is not None:
        waited = time.time() - stats.oldest_queued_at
        print(f"oldest waiting: {waited:.0f}s (request {stats.oldest_queued_id})")
    for load in stats.per_key:
        print(f"key {load.key_id} ({load.name or 'unknown'}): {load.queued} queued, {load.running} running")
    return 0


def _not_found(request_id: str) -> int:
    print(f"error: no request {request_id!r}", file=sys.stderr)
    return 1


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _summary(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status.value,
        "key_id": job.key_id,
        "created_at": _when(job.created_at),
        "error_type": job.error_type,
    }


def _details(job: Job) -> dict[str, Any]:
    body = asdict(job)
    body["result_body"] = json.loads(job.result_body) if job.result_body else None
    for name in ("created_at", "started_at", "completed_at", "lease_expires_at", "start_deadline_at"):
        if body[name] is not None:
            body[name] = _when(body[name])
    return body
