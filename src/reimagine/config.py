"""Settings: the only place that reads the environment. Built once (CLI or tests) and passed down."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from reimagine.schemas import AspectRatio


class Settings(BaseSettings):
    """Every setting of `serve`, `worker`, `keys`, `generate`; env `REIMAGINE_<FIELD>`, flag `--<field-with-dashes>`."""

    model_config = SettingsConfigDict(env_prefix="REIMAGINE_", extra="ignore", validate_default=True)

    # --- network -------------------------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    tls_cert: Path | None = Field(None, description="PEM certificate: serve HTTPS (the Python fal client needs it).")
    tls_key: Path | None = Field(None, description="PEM private key for --tls-cert.")
    public_base_url: str = Field(
        "", description="Base URL put in returned links; empty: the request's scheme and Host (see --trusted-proxies)."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Reverse proxies (IPs or CIDRs) whose X-Forwarded-Proto/Host/Prefix headers are honoured; "
        "from anyone else they are ignored.",
    )
    header_timeout_s: float = Field(10.0, gt=0, description="Time a client has to send a request's headers.")
    body_timeout_s: float = Field(30.0, gt=0, description="Longest pause allowed while a request body arrives.")
    max_connections: int = Field(
        4096, ge=1, description="Open connections beyond which new ones are closed (lowered to the descriptor limit)."
    )
    cors_origins: list[str] = Field(default_factory=list, description="Browser origins allowed to call the API ('*').")

    # --- state ---------------------------------------------------------------------------------------------------
    data_dir: Path = Field(Path("./reimagine-data"), description="Directory for the database, files and keys.")
    database_url: str = Field("", description="sqlite:///path or postgresql://...; empty: SQLite in the data dir.")
    storage: Literal["local", "s3"] = Field("local", description="Where files live.")
    s3_endpoint_url: str = Field("", description="S3-compatible endpoint; empty: AWS.")
    s3_bucket: str = Field("", description="S3 bucket for files.")
    s3_prefix: str = Field("reimagine/", description="Key prefix inside the bucket.")
    s3_presign: bool = Field(False, description="Return presigned S3 URLs instead of proxying files through the API.")
    result_retention_s: int = Field(7 * 24 * 3600, ge=60, description="How long results and files are kept.")

    # --- model ---------------------------------------------------------------------------------------------------
    model: str = Field(
        "briaai/BRIA-3.2",
        description="A Hugging Face id or a local folder; 'tiny' or 'random-full': random weights, the images are "
        "noise ('tiny': tiny configs for tests and demos; 'random-full': the full-size architectures built on the "
        "device, for measuring where no weights can be downloaded).",
    )
    controlnet: str = Field("briaai/BRIA-3.2-ControlNet-Union", description="ControlNet-Union id or folder.")
    depth_model: str = Field("depth-anything/Depth-Anything-V2-Small-hf", description="Depth estimator id or folder.")
    offline: bool = Field(False, description="Never contact the Hugging Face Hub; on when HF_HUB_OFFLINE=1 too.")
    device: str = Field("", description="Torch device of a worker; empty: cuda:0 when present, else cpu.")
    cpu_offload: bool = Field(False, description="Offload idle components to CPU (smaller GPUs, slower).")
    fast: bool = Field(
        True,
        description="Compiled, bf16-tolerant fast path on CUDA (bf16, fused QKV, cuDNN attention, torch.compile per "
        "aspect bucket, cuDNN autotuning): within bf16 rounding of eager, not bit-identical to it.",
    )
    warmup_aspect_ratios: list[AspectRatio] = Field(
        default_factory=list,
        description="Aspect ratios a worker compiles before it is ready (the fast path compiles one graph per size); "
        "empty: all nine. A ratio left out compiles on its first request instead.",
    )
    deterministic: bool = Field(
        False,
        description="Same request, same bytes on one GPU across restarts: no cuDNN or inductor autotuning, "
        "deterministic algorithms, a fixed attention backend (PyTorch flash); a little slower. Without it the fast "
        "path may pick other kernels after a restart (last-bit differences).",
    )
    fp8: bool = Field(False, description="Lossy: FP8 linears in the transformer and ControlNet (torchao).")
    fp8_scaling: Literal["row", "tensor"] = Field(
        "row", description="FP8 scales: one per row of activations and weights, or one per tensor (coarser)."
    )
    step_cache: float = Field(0.0, ge=0.0, description="Lossy: First-Block-Cache threshold; 0 disables it.")
    enhancer: str = Field(
        "off", description="Prompt enhancer backend: 'off', 'local:<hf id or dir>' or 'openai:<base url>'."
    )
    enhancer_model: str = Field("", description="Model name sent to an OpenAI-compatible enhancer.")
    enhancer_api_key: str = Field(
        "",
        description="Bearer key sent to an OpenAI-compatible enhancer (prefer the REIMAGINE_ENHANCER_API_KEY "
        "environment variable: a flag shows in the process list).",
    )
    enhancer_timeout_s: float = Field(
        30.0, gt=0, description="How long an OpenAI-compatible enhancer may take; then the original prompt is used."
    )

    # --- workers -------------------------------------------------------------------------------------------------
    generate: str = Field(
        "", description="Import path 'module:factory' of a generate factory (tests, custom models); empty: Bria."
    )
    workers: int = Field(-1, ge=-1, description="Worker processes spawned by serve; -1: one per GPU (one on CPU).")
    lease_s: float = Field(30.0, gt=0, description="A running job's lease; renewed by heartbeats.")
    heartbeat_s: float = Field(10.0, gt=0, description="How often a worker renews its lease.")
    batch_requests: int = Field(
        1,
        ge=1,
        le=2,
        description="Up to this many waiting requests of the same size, steps, guidance and conditions share one "
        "denoising batch (each keeps its own seed; images equal within float tolerance, not bit for bit). 1: off.",
    )
    max_attempts: int = Field(3, ge=1, description="Worker deaths a job may cause before it is 'poisoned'.")
    drain_grace_s: float = Field(
        25.0,
        gt=0,
        description="On SIGTERM: time the running jobs get to finish (no new one is claimed); what cannot finish "
        "is given back to the queue without counting an attempt. Keep it under your orchestrator's kill timeout.",
    )
    test_oom_seed: int = Field(
        -1,
        ge=-1,
        description="Test only: a job with this seed runs out of memory (on CUDA its worker's memory is capped at what "
        "it already holds, so the allocator fails for real; on CPU the error is raised), to check that it ends as "
        "503 out_of_memory and the worker recovers; -1: off.",
    )
    worker_start_failures: int = Field(
        3, ge=1, description="Failed worker starts in a row after which submits get 503 until a worker is up."
    )
    preview_interval_s: float = Field(0.5, ge=0, description="Minimum seconds between stored low-res previews.")

    # --- inputs and limits ----------------------------------------------------------------------------------------
    strict_inputs: bool = Field(False, description="Reject unknown input fields with 422 instead of ignoring them.")
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="Fetcher allow-list for on-prem use: hosts, IPs or CIDRs admitted despite being private.",
    )
    fetch_max_bytes: int = Field(32 * 1024 * 1024, gt=0, description="Largest remote image or upload fetched.")
    fetch_timeout_s: float = Field(20.0, gt=0, description="Total time allowed for one remote fetch.")
    max_image_pixels: int = Field(40_000_000, gt=0, description="Decoded image pixel cap (decompression bombs).")
    max_request_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest JSON request body (inline data URIs included); larger is 413."
    )
    max_upload_bytes: int = Field(
        100 * 1024 * 1024, gt=0, description="Largest file accepted by the storage API (streamed, never held whole)."
    )
    max_queue_depth: int = Field(1000, ge=1, description="Queued jobs beyond which submits get 429.")
    submit_rate_per_min: int = Field(600, ge=0, description="Submits per minute per key; 0 disables the limit.")
    sync_timeout_s: float = Field(600.0, gt=0, description="How long a sync run waits for its result.")

    # --- webhooks ------------------------------------------------------------------------------------------------
    webhook_max_attempts: int = Field(11, ge=1, description="First delivery plus retries (fal: 10 retries).")
    webhook_window_s: float = Field(7200.0, gt=0, description="Retries spread over this window, with jitter.")
    webhook_timeout_s: float = Field(15.0, gt=0, description="Per-attempt timeout of a webhook POST.")
    webhook_user_id: str = Field("reimagine", description="Sent as X-Fal-Webhook-User-Id.")

    # --- auth ----------------------------------------------------------------------------------------------------
    auth: bool = Field(True, description="Require `Authorization: Key ...` on the API.")

    metrics_token: str = Field(
        "", description="Bearer token /metrics requires (Authorization: Bearer ...); empty: no token."
    )
    metrics_key: bool = Field(False, description="/metrics requires an admin API key (Authorization: Key ...).")

    # --- logging -------------------------------------------------------------------------------------------------
    log_level: str = Field("INFO", description="Python log level.")
    log_json: bool = Field(False, description="Log JSON lines instead of text.")

    @field_validator("cors_origins", "allow_hosts", "trusted_proxies", "warmup_aspect_ratios", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _ip_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip("[]"), strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or CIDR: {entry!r}") from None
        return value

    @model_validator(mode="after")
    def _hub_offline(self) -> Settings:
        # The Hugging Face libraries' own switch means the same to us: an air-gapped machine sets it once.
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            self.offline = True
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'reimagine.db').resolve()}"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def is_tiny(self) -> bool:
        return self.model == "tiny"

    @property
    def is_random(self) -> bool:
        """A preset built from random weights ('tiny', 'random-full'): no download, and its images are noise."""
        return self.model in ("tiny", "random-full")
