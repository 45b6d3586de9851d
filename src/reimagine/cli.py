"""`reimagine serve | worker | keys | usage | requests | queue | generate | models`; flags from the schemas.

Every setting is a flag named after its field (`data_dir` -> `--data-dir`), and every input field of the endpoint
is a flag of `generate`; a flag overrides the `REIMAGINE_*` environment, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import enum
import sys
import time
import types
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from reimagine.config import Settings
from reimagine.queue.keys import Scope
from reimagine.schemas import ReimagineInput

#: Settings only the HTTP side reads: `worker --help` leaves them out.
_API_ONLY = {
    "host",
    "port",
    "tls_cert",
    "tls_key",
    "public_base_url",
    "trusted_proxies",
    "cors_origins",
    "s3_presign",
    "result_retention_s",
    "workers",
    "worker_start_failures",
    "strict_inputs",
    "max_request_bytes",
    "max_upload_bytes",
    "max_queue_depth",
    "submit_rate_per_min",
    "sync_timeout_s",
    "webhook_max_attempts",
    "webhook_window_s",
    "webhook_timeout_s",
    "webhook_user_id",
    "auth",
    "metrics_token",
    "metrics_key",
    "header_timeout_s",
    "body_timeout_s",
    "max_connections",
}

_SETTINGS_FOR = {
    "serve": None,  # every setting
    "worker": tuple(name for name in Settings.model_fields if name not in _API_ONLY),
    "generate": (
        "model",
        "controlnet",
        "depth_model",
        "offline",
        "device",
        "cpu_offload",
        "fast",
        "deterministic",
        "fp8",
        "fp8_scaling",
        "step_cache",
        "enhancer",
        "enhancer_model",
        "enhancer_api_key",
        "enhancer_timeout_s",
        "data_dir",
        "allow_hosts",
        "fetch_max_bytes",
        "fetch_timeout_s",
        "max_image_pixels",
        "log_level",
        "generate",
    ),
    "keys": ("data_dir", "database_url", "log_level"),
    "models": ("model", "controlnet", "depth_model", "offline", "log_level"),
}


def _add_field_flags(
    parser: argparse.ArgumentParser, model: type[BaseModel], names: typing.Iterable[str] | None, dest_prefix: str
) -> None:
    for name, info in model.model_fields.items():
        if names is not None and name not in names:
            continue
        _add_flag(parser, name, info, dest_prefix)


def _add_flag(parser: argparse.ArgumentParser, name: str, info: FieldInfo, dest_prefix: str) -> None:
    flag = "--" + name.replace("_", "-")
    annotation = info.annotation
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        annotation, origin = args[0], typing.get_origin(args[0])
    default_text = "" if info.is_required() else f" (default: {_shown(info.get_default(call_default_factory=True))})"
    help_text = (info.description or "") + default_text
    # The metavar is the flag's own name: argparse would show the `dest`, prefixed for routing (S_PORT, I_SEED).
    kwargs: dict[str, Any] = {
        "dest": dest_prefix + name,
        "default": argparse.SUPPRESS,
        "help": help_text.replace("%", "%%"),
        "metavar": name.upper(),
    }
    if annotation is bool:
        del kwargs["metavar"]
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        del kwargs["metavar"]
        parser.add_argument(flag, choices=[member.value for member in annotation], **kwargs)
    elif origin is typing.Literal:
        del kwargs["metavar"]
        parser.add_argument(flag, choices=list(typing.get_args(annotation)), **kwargs)
    elif origin is list:
        parser.add_argument(flag, **{**kwargs, "metavar": "A,B"})
    elif annotation is int:
        parser.add_argument(flag, type=int, **kwargs)
    elif annotation is float:
        parser.add_argument(flag, type=float, **kwargs)
    else:
        parser.add_argument(flag, **kwargs)


def _shown(value: object) -> str:
    """A default as the user would type it: `1:1`, not `<AspectRatio.SQUARE: '1:1'>`; a path, not `PosixPath(...)`."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, list):
        return ",".join(str(item) for item in value) or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == "":
        return "none"
    return str(value)


def _split(namespace: argparse.Namespace, prefix: str) -> dict[str, Any]:
    return {key[len(prefix) :]: value for key, value in vars(namespace).items() if key.startswith(prefix)}


def build_parser() -> argparse.ArgumentParser:
    from reimagine import __version__

    parser = argparse.ArgumentParser(prog="reimagine", description="Self-hosted, fal.ai-compatible bria/reimagine/3.2")
    parser.add_argument("--version", action="version", version=f"reimagine {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="Run the HTTP API (and its worker processes)")
    _add_field_flags(serve, Settings, _SETTINGS_FOR["serve"], "s_")

    worker = commands.add_parser("worker", help="Run a standalone worker that pulls jobs from the store")
    _add_field_flags(worker, Settings, _SETTINGS_FOR["worker"], "s_")

    keys = commands.add_parser("keys", help="Manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="Create a key and print it (the last line of stdout)")
    create.add_argument("--name", default="default", help="A label for the key")
    create.add_argument(
        "--scope",
        choices=[scope.value for scope in Scope],
        default=Scope.ADMIN.value,
        help="read: status/result/listing; submit: submit/run/cancel/upload; admin: everything (default)",
    )
    create.add_argument("--expires-in-days", type=float, default=None, help="Stop working after this many days")
    create.add_argument(
        "--max-concurrent", type=int, default=None, help="At most this many of its jobs run at once (default: no limit)"
    )
    key_commands.add_parser("list", help="List keys (ids, names, scopes, expiry, limits; never secrets)")
    revoke = key_commands.add_parser("revoke", help="Revoke a key by id")
    revoke.add_argument("key_id", help="The key's id (the part before ':')")
    for sub in (create, key_commands.choices["list"], revoke):
        _add_field_flags(sub, Settings, _SETTINGS_FOR["keys"], "s_")

    usage = commands.add_parser("usage", help="Usage per API key and day: images, GPU seconds, bytes in and out")
    usage.add_argument("--key", default=None, help="One key, by id or name (default: every key)")
    usage.add_argument("--since", default="", metavar="YYYY-MM-DD", help="From this UTC day on (default: all)")
    _add_field_flags(usage, Settings, _SETTINGS_FOR["keys"], "s_")

    generate = commands.add_parser("generate", help="Generate one image locally, no server needed")
    _add_field_flags(generate, ReimagineInput, None, "i_")
    _add_field_flags(generate, Settings, _SETTINGS_FOR["generate"], "s_")
    generate.add_argument("--depth-image", default=None, metavar="PATH|URL", help="Depth structure image")
    generate.add_argument("--canny-image", default=None, metavar="PATH|URL", help="Canny structure image")
    generate.add_argument("-o", "--output", type=Path, default=Path("out.png"), help="Output PNG (default out.png)")

    from reimagine import admin

    admin.add_commands(commands, lambda sub: _add_field_flags(sub, Settings, admin.SETTINGS, "s_"))

    models = commands.add_parser("models", help="Model weights")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    pull = model_commands.add_parser("pull", help="Download the model weights into the Hugging Face cache")
    _add_field_flags(pull, Settings, _SETTINGS_FOR["models"], "s_")
    _mark_leaves(parser)
    return parser


def _mark_leaves(parser: argparse.ArgumentParser) -> None:
    """Each command's parser records itself in the namespace, so errors print that command's usage."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _mark_leaves(sub)
            return
    parser.set_defaults(command_parser=parser)


def main(argv: list[str] | None = None) -> int:
    from reimagine.errors import ConfigError, ModelMissing

    parser = build_parser()
    namespace, extra = parser.parse_known_args(argv)
    if extra:
        # The command's own usage, not the top level's: `generate --bogus` shows generate's flags.
        leaf: argparse.ArgumentParser = getattr(namespace, "command_parser", parser)
        leaf.error(f"unrecognized arguments: {' '.join(extra)}")
    settings = Settings(**_split(namespace, "s_"))
    from reimagine.logs import configure_logging

    configure_logging(settings, role=namespace.command)
    from reimagine.weights import keep_hub_offline

    keep_hub_offline(settings)
    try:
        return _run(parser, settings, namespace)
    except (ConfigError, ModelMissing) as exc:
        # A setting, a port, a database or the weights: one line saying what to fix, no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(parser: argparse.ArgumentParser, settings: Settings, namespace: argparse.Namespace) -> int:
    if namespace.command == "serve":
        from reimagine.api.serve import serve

        return serve(settings)
    if namespace.command == "worker":
        from reimagine.worker.standalone import run_worker

        return run_worker(settings)
    if namespace.command == "keys":
        return _keys(settings, namespace)
    if namespace.command == "usage":
        return _usage(settings, namespace)
    if namespace.command in ("requests", "queue"):
        from reimagine import admin

        store = open_existing_store(settings)
        try:
            return admin.run(settings, namespace, store)
        finally:
            store.close()
    if namespace.command == "generate":
        return _generate(parser, settings, namespace)
    if namespace.command == "models":
        from reimagine.errors import ModelMissing
        from reimagine.worker.oneshot import pull_models

        try:
            pull_models(settings)
        except ModelMissing as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    parser.error(f"unknown command {namespace.command}")
    return 2


def open_existing_store(settings: Settings) -> Any:
    """The store of a command that reads or changes what is there: a missing database is an error, never created.

    (`serve`, `worker` and `keys create` create and migrate the store; a typo in `--data-dir` must not make the
    other commands answer from a new, empty one.)
    """
    from sqlalchemy.exc import OperationalError

    from reimagine.errors import ConfigError
    from reimagine.queue import open_store

    url = settings.resolved_database_url
    if url.startswith("sqlite:"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            where = f"--data-dir {settings.data_dir}" if not settings.database_url else "--database-url"
            raise ConfigError(f"no database at {path}: check {where} (`reimagine serve` creates it)")
    try:
        return open_store(url, max_attempts=settings.max_attempts)
    except OperationalError as exc:
        raise ConfigError(f"cannot open the database: {str(exc.orig).strip() or exc}") from exc


def _keys(settings: Settings, namespace: argparse.Namespace) -> int:
    from reimagine.queue import open_store

    if namespace.keys_command == "create":
        store = open_store(settings.resolved_database_url)
    else:
        store = open_existing_store(settings)
    if namespace.keys_command == "create":
        if namespace.max_concurrent is not None and namespace.max_concurrent < 1:
            print("error: --max-concurrent must be at least 1", file=sys.stderr)
            return 2
        expires_at = time.time() + namespace.expires_in_days * 86400 if namespace.expires_in_days is not None else None
        print(
            store.keys.create(
                namespace.name,
                scope=Scope(namespace.scope),
                expires_at=expires_at,
                max_concurrent=namespace.max_concurrent,
            )
        )
    elif namespace.keys_command == "list":
        print("id\tname\tstate\tscope\texpires\tmax_concurrent")
        for key in store.keys.all():
            expired = key.expires_at is not None and key.expires_at <= time.time()
            state = "revoked" if key.revoked_at else "expired" if expired else "active"
            expires = _day(key.expires_at) if key.expires_at is not None else "-"
            limit = str(key.max_concurrent) if key.max_concurrent is not None else "-"
            print(f"{key.id}\t{key.name}\t{state}\t{key.scope.value}\t{expires}\t{limit}")
    elif namespace.keys_command == "revoke":
        if not store.keys.revoke(namespace.key_id):
            print(f"no active key with id {namespace.key_id!r}", file=sys.stderr)
            return 1
        print(f"revoked {namespace.key_id}")
    return 0


def _day(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M")


def _usage(settings: Settings, namespace: argparse.Namespace) -> int:
    """A tab-separated table, oldest day first, then a total per key."""
    from reimagine.queue import open_store

    store = open_store(settings.resolved_database_url)
    try:
        rows = store.usage.rows(key=namespace.key, since=namespace.since)
    finally:
        store.close()
    print("day\tkey\tname\timages\tfailed\tgpu_s\tinput_bytes\toutput_bytes")
    totals: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        print(
            f"{row.day}\t{row.key_id}\t{row.key_name}\t{row.images}\t{row.failed}\t{row.gpu_s:.1f}"
            f"\t{row.input_bytes}\t{row.output_bytes}"
        )
        total = totals.setdefault((row.key_id, row.key_name), [0, 0, 0.0, 0, 0])
        for i, value in enumerate((row.images, row.failed, row.gpu_s, row.input_bytes, row.output_bytes)):
            total[i] += value
    for (key_id, name), (images, failed, gpu_s, input_bytes, output_bytes) in totals.items():
        print(
            f"total\t{key_id}\t{name}\t{images:.0f}\t{failed:.0f}\t{gpu_s:.1f}\t{input_bytes:.0f}\t{output_bytes:.0f}"
        )
    return 0


def _generate(parser: argparse.ArgumentParser, settings: Settings, namespace: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from reimagine.errors import InputError, ModelMissing
    from reimagine.worker.oneshot import run_generate

    try:
        inputs = ReimagineInput(**_split(namespace, "i_"))
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            field = ".".join(str(part) for part in error["loc"])
            print(f"error: --{field.replace('_', '-')}: {error['msg']}", file=sys.stderr)
        return 2
    try:
        depth = namespace.depth_image or inputs.depth_image_url or None
        canny = namespace.canny_image or inputs.canny_image_url or None
        path = run_generate(settings, inputs, depth, canny, namespace.output)
    except InputError as exc:
        print(f"error: {exc.field}: {exc.message}", file=sys.stderr)
        return 2
    except ModelMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
