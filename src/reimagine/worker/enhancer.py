"""`prompt_enhancer`: an optional rewrite of the prompt before T5 encodes it.

Bria's hosted enhancer is a server-side LLM with no public code or model (bria-model.md §5); here the backend is
the operator's choice, `Settings.enhancer`: 'off' (default), 'local:<hf id or dir>' (a transformers causal LM,
greedy, so deterministic) or 'openai:<base url>' (any OpenAI-compatible chat API, temperature 0 and the request's
seed). Truncation to 128 tokens happens after the rewrite. A remote enhancer that times out, answers an error or
answers nonsense raises `EnhancerFailed`: the request goes on with the original prompt (the enhancer is an extra,
not a reason to fail an image).
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx
import torch

from reimagine.config import Settings
from reimagine.errors import ConfigError

__all__ = ["INSTRUCTION", "Enhancer", "EnhancerFailed", "LocalEnhancer", "OpenAIEnhancer", "load_enhancer"]

#: The system instruction every backend gets.
INSTRUCTION = (
    "Rewrite the user's image prompt into one richer, more descriptive prompt for a text-to-image model: keep the "
    "subject and intent, add concrete visual detail (composition, lighting, materials, style). Answer with the "
    "prompt only, under 80 words."
)


class EnhancerFailed(Exception):
    """The enhancer gave no usable rewrite; the message says why (for the request's logs)."""


class Enhancer(Protocol):
    def enhance(self, prompt: str, seed: int) -> str:
        """The rewritten prompt; raises `EnhancerFailed` when a remote backend gives none."""


class LocalEnhancer:
    """A local transformers causal LM; greedy decoding makes the rewrite a function of the prompt alone."""

    def __init__(self, source: str, device: torch.device, *, offline: bool, max_new_tokens: int = 160) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model: Any = AutoModelForCausalLM.from_pretrained(source, local_files_only=offline, dtype=dtype)
        self.model = model.to(device).eval()
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def enhance(self, prompt: str, seed: int) -> str:
        if self.tokenizer.chat_template:
            messages = [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": prompt}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = f"{INSTRUCTION}\n\nPrompt: {prompt}\nRewritten prompt:"
        inputs = self.tokenizer(text, return_tensors="pt").to(self.model.device)
        output = self.model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=self.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
        rewritten: str = self.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return rewritten.strip() or prompt


class OpenAIEnhancer:
    """POST {base}/chat/completions, temperature 0 and the request's seed (as deterministic as the server allows)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        client: httpx.Client | None = None,
        api_key: str = "",
        timeout_s: float = 30.0,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.Client(timeout=timeout_s, headers=headers)

    def enhance(self, prompt: str, seed: int) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": prompt}],
            "temperature": 0,
            "seed": seed,
        }
        try:
            response = self.client.post(self.url, json=body)
        except httpx.TimeoutException:
            raise EnhancerFailed(f"{self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise EnhancerFailed(f"{self.url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise EnhancerFailed(f"{self.url} answered HTTP {response.status_code}: {response.text[:200]!r}")
        try:
            rewritten = response.json()["choices"][0]["message"]["content"]
        except (ValueError, LookupError, TypeError):
            raise EnhancerFailed(f"{self.url} answered no chat completion: {response.text[:200]!r}") from None
        if not isinstance(rewritten, str):
            raise EnhancerFailed(f"{self.url} answered a non-text message content: {rewritten!r:.200}")
        return rewritten.strip() or prompt


def load_enhancer(settings: Settings, device: torch.device) -> Enhancer | None:
    """The backend `settings.enhancer` names; None for 'off'. An unknown scheme fails at start-up."""
    backend = settings.enhancer.strip()
    if backend in ("", "off"):
        return None
    scheme, _, target = backend.partition(":")
    if scheme == "local" and target:
        return LocalEnhancer(target, device, offline=settings.offline)
    if scheme == "openai" and target:
        if not settings.enhancer_model:
            raise ConfigError("`enhancer_model` must name the model of an 'openai:' enhancer")
        return OpenAIEnhancer(
            target,
            settings.enhancer_model,
            api_key=settings.enhancer_api_key,
            timeout_s=settings.enhancer_timeout_s,
        )
    raise ConfigError(f"`enhancer` must be 'off', 'local:<hf id or dir>' or 'openai:<base url>', got {backend!r}")
