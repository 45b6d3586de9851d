"""Prompt length rules of `truncate_prompt`, checkable without torch (the API process never imports it).

Bria 3.2 was trained with 128 T5 tokens (bria-model.md §5): a longer prompt is either cut there, keeping the
closing `</s>` (`truncate_prompt=true`, what `BriaPipeline` does), or rejected with the token count. Counting
uses the `tokenizers` library alone: importing `transformers` would import torch.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import Unigram

from reimagine.config import Settings
from reimagine.errors import InputError, ModelMissing
from reimagine.schemas import ReimagineInput

__all__ = ["MAX_PROMPT_TOKENS", "TINY_VOCAB", "build_tiny_tokenizer", "check_prompt_length", "count_tokens"]
__all__ += ["load_tokenizer", "truncate_to_tokens"]

#: T5 tokens the model sees, including `</s>` (Bria's `max_sequence_length`).
MAX_PROMPT_TOKENS = 128

_CHARS = string.ascii_letters + string.digits + string.punctuation
_WORDS = ["a", "the", "of", "photo", "cat", "dog", "red", "blue", "in", "on", "with", "and"]

#: The tiny preset's Unigram vocabulary in T5's id layout (`<pad>`=0, `</s>`=1, `<unk>`=2): a few words plus every
#: ASCII character, so any ASCII prompt tokenises. `reimagine.worker.tiny` builds its `T5Tokenizer` from it.
TINY_VOCAB: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
TINY_VOCAB += [("\u2581" + word, -3.0) for word in _WORDS]
TINY_VOCAB += [(char, -5.0) for char in _CHARS] + [("\u2581" + char, -5.5) for char in _CHARS]


def build_tiny_tokenizer() -> Tokenizer:
    """The tiny preset's tokenizer, built the way transformers' `T5Tokenizer(vocab=TINY_VOCAB, extra_ids=0)` is."""
    tokenizer = Tokenizer(Unigram(TINY_VOCAB, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    return tokenizer


def load_tokenizer(settings: Settings) -> Tokenizer:
    """The T5 tokenizer of `settings.model`: its `tokenizer/tokenizer.json` (local folder or Hub), or the tiny one
    (the random-weight presets)."""
    if settings.is_random:
        return build_tiny_tokenizer()
    local = Path(settings.model) / "tokenizer" / "tokenizer.json"
    if local.is_file():
        return Tokenizer.from_file(str(local))
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    from reimagine.weights import keep_hub_offline

    keep_hub_offline(settings)

    def download(*, local_files_only: bool) -> str:
        path: str = hf_hub_download(
            settings.model, "tokenizer.json", subfolder="tokenizer", local_files_only=local_files_only
        )
        return path

    try:
        # The cache first: an API replica needs no network once the tokenizer is there, and with `offline`
        # (or HF_HUB_OFFLINE) it never contacts the Hub at all.
        path = download(local_files_only=True)
    except (OSError, HfHubHTTPError) as cached_exc:
        if settings.offline:
            raise ModelMissing(
                f"The T5 tokenizer of {settings.model!r} is not in the Hugging Face cache and offline mode is on. "
                "Run `reimagine models pull` (or point --model at a local BRIA-3.2 folder)."
            ) from cached_exc
        try:
            path = download(local_files_only=False)
        except (OSError, HfHubHTTPError) as exc:
            raise ModelMissing(
                f"The T5 tokenizer of {settings.model!r} is not available ({type(exc).__name__}). "
                "Run `reimagine models pull` (or point --model at a local BRIA-3.2 folder)."
            ) from exc
    return Tokenizer.from_file(path)


def count_tokens(tokenizer: Tokenizer, prompt: str) -> int:
    """T5 tokens of `prompt` as the text encoder sees them untruncated, including the closing `</s>`."""
    return len(tokenizer.encode(prompt).ids)


def truncate_to_tokens(tokenizer: Tokenizer, prompt: str, max_tokens: int = MAX_PROMPT_TOKENS) -> str:
    """`prompt` cut to its first `max_tokens - 1` tokens (`</s>` is the last), decoded back to text."""
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    if len(ids) < max_tokens:
        return prompt
    return tokenizer.decode(ids[: max_tokens - 1], skip_special_tokens=True)


def check_prompt_length(tokenizer: Tokenizer, inputs: ReimagineInput) -> None:
    """Raise `InputError("prompt")` if the prompt is over 128 tokens and `truncate_prompt` is false."""
    if inputs.truncate_prompt:
        return
    count = count_tokens(tokenizer, inputs.prompt)
    if count > MAX_PROMPT_TOKENS:
        raise InputError(
            "prompt",
            f"`prompt` is {count} tokens, max {MAX_PROMPT_TOKENS} (T5 tokens, including the end token); "
            "shorten it or set `truncate_prompt` to true",
        )
