"""What `serve` and its embedded worker processes say to each other over their pipe: one class per message.

A worker sends `Hello` once it exists, `Ready` once its model is loaded (or `StartFailed` if it cannot be), then
per job `JobEvent` whenever it wrote an event (a start, a progress step, a log line) and `JobDone` when it wrote
the outcome, and `Idle` before it waits for work. `serve` answers `Idle` with `Wake` when work arrives and sends
`Stop` to drain. The pipe is the fast path only: everything a message announces is already in the store.

Adding a message is one class here plus one `case` in the receiver; mypy checks that every case is handled
(`assert_never` in `Supervisor._handle` and `embedded._wait`). Messages are pickled by `multiprocessing`, so they
stay plain frozen dataclasses of plain values.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- worker -> serve ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """The process started; `owner` is the lease owner its jobs will carry (`serve` reclaims them if it dies)."""

    owner: str


@dataclass(frozen=True, slots=True)
class Ready:
    """The model is loaded and warm: the worker counts towards `/health/ready`."""

    owner: str


@dataclass(frozen=True, slots=True)
class StartFailed:
    """The worker cannot start (a missing model); `serve` logs why, shows it in `/health/ready`, restarts it later."""

    reason: str


@dataclass(frozen=True, slots=True)
class Log:
    """A line for `serve`'s log (model loading progress)."""

    message: str


@dataclass(frozen=True, slots=True)
class Idle:
    """About to wait for work: a `Wake` is sent only now, so the pipe never fills up."""


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A job event was written (claim, progress, log, maps): status streams should look now."""


@dataclass(frozen=True, slots=True)
class JobDone:
    """A job's outcome was written (and the next job claimed in the same write, if there was one)."""

    #: the job has a webhook, so its outbox row is due now
    webhook_due: bool


WorkerMessage = Hello | Ready | StartFailed | Log | Idle | JobEvent | JobDone

# -- serve -> worker ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wake:
    """Work was queued (or a cancel asked): look at the store now instead of at the end of the idle wait."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Drain: finish the current job, take no new one, exit."""


ServeMessage = Wake | Stop
