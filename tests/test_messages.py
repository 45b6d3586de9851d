"""The pipe between `serve` and its workers: every message crosses a process boundary intact."""

from __future__ import annotations

import dataclasses
import pickle
import typing

from reimagine.worker import messages


def _classes(union: object) -> set[type]:
    return set(typing.get_args(union))


def test_every_message_class_is_in_exactly_one_direction() -> None:
    defined = {
        value for value in vars(messages).values() if dataclasses.is_dataclass(value) and isinstance(value, type)
    }
    worker, serve = _classes(messages.WorkerMessage), _classes(messages.ServeMessage)
    assert worker | serve == defined and not worker & serve


def test_messages_survive_pickling_as_multiprocessing_sends_them() -> None:
    samples = [
        messages.Hello("host/1/ab"),
        messages.Ready("host/1/ab"),
        messages.StartFailed("model missing"),
        messages.Log("loading"),
        messages.Idle(),
        messages.JobEvent(),
        messages.JobDone(webhook_due=True),
        messages.Wake(),
        messages.Stop(),
    ]
    assert {type(sample) for sample in samples} == _classes(messages.WorkerMessage) | _classes(messages.ServeMessage)
    for sample in samples:
        assert pickle.loads(pickle.dumps(sample)) == sample
