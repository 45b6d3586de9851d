"""Are the model's weights there? Checked by `serve` and `worker` before anything is spawned or loaded.

A source is available when it is a local folder, when the Hugging Face cache holds it, or (online) when the Hub
answers for it and lets this token read it. Anything else is one `ModelMissing` whose message says what to do; a
network failure is named as such. No torch here: `serve` runs this in the API process.
"""

from __future__ import annotations

from pathlib import Path

from reimagine.config import Settings
from reimagine.errors import ModelMissing

__all__ = ["check_weights", "keep_hub_offline"]

#: A small file every source of each kind holds: its presence in the cache, or on the Hub, stands for the source.
_SOURCES = (
    ("model", "--model", "Bria 3.2", "model_index.json", ""),
    ("controlnet", "--controlnet", "ControlNet-Union", "config.json", "controlnet"),
    ("depth_model", "--depth-model", "depth model", "config.json", "depth_estimator"),
)
_HUB_TIMEOUT_S = 10.0


def check_weights(settings: Settings) -> None:
    """Raise `ModelMissing` unless every model `settings` names can be loaded (random presets: yes)."""
    if settings.is_random or settings.generate:
        return
    for field, flag, what, probe, saved_part in _SOURCES:
        source: str = getattr(settings, field)
        if saved_part and (Path(settings.model) / saved_part).is_dir():
            continue  # a folder saved by reimagine carries its own controlnet/ and depth_estimator/
        _check_source(source, flag, what, probe, offline=settings.offline)


def keep_hub_offline(settings: Settings) -> None:
    """With `offline`, tell huggingface_hub too: `local_files_only` alone still let it fetch its own registries."""
    if settings.offline:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True


def _check_source(source: str, flag: str, what: str, probe: str, *, offline: bool) -> None:
    if Path(source).is_dir():
        return
    if source.startswith(("/", "./", "../", "~")):
        raise ModelMissing(f"{flag} {source}: no such folder ({what})")
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, probe), str):
        return
    if offline:
        raise ModelMissing(
            f"{what} ({flag} {source}) is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and offline mode "
            "is on: run `reimagine models pull` where the Hub is reachable (same HF_HOME), or point "
            f"{flag} at a local folder"
        )
    _check_hub(source, flag, what, probe)


def _check_hub(source: str, flag: str, what: str, probe: str) -> None:
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        # One HEAD, no retries: a start-up check must answer in seconds.
        get_hf_file_metadata(hf_hub_url(source, probe), timeout=_HUB_TIMEOUT_S)
    except GatedRepoError as exc:
        raise ModelMissing(
            f"{what} ({flag} {source}) is gated: accept its licence on https://huggingface.co/{source} with the "
            "account whose token you use (`hf auth login` or HF_TOKEN), then run `reimagine models pull`"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelMissing(
            f"{what} ({flag} {source}): no such repository on {constants.ENDPOINT} (or it is private and HF_TOKEN "
            "does not grant access)"
        ) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise ModelMissing(f"{what} ({flag} {source}): the Hugging Face Hub answered HTTP {status}") from exc
    except Exception as exc:
        if not _is_network_error(exc):
            raise
        raise ModelMissing(
            f"{what} ({flag} {source}) is not in the Hugging Face cache and the Hub at {constants.ENDPOINT} cannot "
            f"be reached (network error: {type(exc).__name__}: {exc}). Run `reimagine models pull` where it is "
            f"reachable, or point {flag} at a local folder and add --offline"
        ) from exc


def _is_network_error(exc: BaseException) -> bool:
    # huggingface_hub speaks through httpx (or its fork httpx2, by version): their transport errors share a name.
    return isinstance(exc, OSError) or any(cls.__name__ == "TransportError" for cls in type(exc).__mro__)
