"""The torch-free prompt rules the API process uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reimagine.config import Settings
from reimagine.errors import InputError
from reimagine.prompt import (
    MAX_PROMPT_TOKENS,
    build_tiny_tokenizer,
    check_prompt_length,
    count_tokens,
    load_tokenizer,
    truncate_to_tokens,
)
from reimagine.schemas import ReimagineInput
from reimagine.worker.pipeline import ReimaginePipeline


def test_prompt_module_imports_neither_torch_nor_diffusers() -> None:
    code = (
        "import sys, reimagine.prompt as p\n"
        "from reimagine.config import Settings\n"
        "p.count_tokens(p.load_tokenizer(Settings(model='tiny')), 'a cat')\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "prompt", ["a red cat on the sofa", "Hello, World! 42 times", "caf\u00e9 \u00fcber", "  spaced   out  "]
)
def test_tiny_tokenizer_counts_like_the_pipeline_tokenizer(pipe: ReimaginePipeline, prompt: str) -> None:
    assert count_tokens(build_tiny_tokenizer(), prompt) == len(pipe.bria.tokenizer(prompt).input_ids)


def test_count_includes_the_end_token() -> None:
    assert count_tokens(build_tiny_tokenizer(), "a cat") == 3  # ▁a ▁cat </s>


def test_check_prompt_length_names_the_field_and_count() -> None:
    tokenizer = build_tiny_tokenizer()
    long_input = ReimagineInput(prompt="a " * 130, truncate_prompt=False)
    with pytest.raises(InputError) as caught:
        check_prompt_length(tokenizer, long_input)
    assert caught.value.field == "prompt" and "131 tokens, max 128" in caught.value.message
    check_prompt_length(tokenizer, long_input.model_copy(update={"truncate_prompt": True}))
    check_prompt_length(tokenizer, ReimagineInput(prompt="a " * 127, truncate_prompt=False))


def test_truncate_keeps_room_for_the_end_token() -> None:
    tokenizer = build_tiny_tokenizer()
    cut = truncate_to_tokens(tokenizer, "a " * 300)
    assert count_tokens(tokenizer, cut) == MAX_PROMPT_TOKENS
    assert truncate_to_tokens(tokenizer, "a cat") == "a cat"


def test_load_tokenizer_from_a_saved_model_folder(pipe: ReimaginePipeline, tmp_path: Path) -> None:
    pipe.bria.tokenizer.save_pretrained(tmp_path / "tokenizer")
    tokenizer = load_tokenizer(Settings(model=str(tmp_path), offline=True))
    assert count_tokens(tokenizer, "a red cat") == count_tokens(build_tiny_tokenizer(), "a red cat")
