"""Prompt-enhancer backends and the structure-map preprocessors."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from reimagine.config import Settings
from reimagine.errors import ConfigError
from reimagine.generation import Controls
from reimagine.worker.enhancer import INSTRUCTION, EnhancerFailed, LocalEnhancer, OpenAIEnhancer, load_enhancer
from reimagine.worker.pipeline import ReimaginePipeline, generate
from reimagine.worker.preprocess import canny_map
from reimagine.worker.tiny import build_tiny_depth_estimator
from tests.pipeline.helpers import RecordingHooks, make_inputs, photo


class _StubLLM:
    """An OpenAI-compatible chat-completions server on 127.0.0.1; `answer` is (status, body) or "hang"."""

    def __init__(self) -> None:
        self.answer: tuple[int, bytes] | str = (200, b"{}")
        self.requests: list[tuple[str, dict[str, str], dict[str, object]]] = []
        self.release = threading.Event()  # a hanging answer waits for it (set at teardown)
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((self.path, dict(self.headers), body))
                if stub.answer == "hang":
                    stub.release.wait()
                    return
                status, payload = stub.answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reply(self, content: object) -> None:
        self.answer = (200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode())

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def llm() -> Iterator[_StubLLM]:
    stub = _StubLLM()
    yield stub
    stub.close()


def test_openai_enhancer_over_http(llm: _StubLLM) -> None:
    llm.reply("  a detailed red cat  ")
    enhancer = OpenAIEnhancer(llm.url, "tiny-llm", api_key="k1")
    assert enhancer.enhance("a cat", seed=9) == "a detailed red cat"
    path, headers, body = llm.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer k1"
    assert body["model"] == "tiny-llm" and body["seed"] == 9


_FAILURES = {
    "timeout": "hang",
    "non-200": (503, b'{"error": {"message": "overloaded"}}'),
    "not JSON": (200, b"<html>gateway</html>"),
    "no choices": (200, b'{"choices": []}'),
    "non-text content": (200, b'{"choices": [{"message": {"content": null}}]}'),
}


@pytest.mark.parametrize("failure", list(_FAILURES))
def test_a_failing_enhancer_leaves_the_original_prompt_and_a_log_line(
    pipe: ReimaginePipeline, llm: _StubLLM, failure: str
) -> None:
    llm.answer = _FAILURES[failure]
    enhancer = OpenAIEnhancer(llm.url, "tiny-llm", timeout_s=0.2)
    with pytest.raises(EnhancerFailed):
        enhancer.enhance("a cat", seed=1)
    hooks = RecordingHooks()
    inputs = make_inputs(prompt="a red cat", prompt_enhancer=True, num_inference_steps=1)
    generated = generate(dataclasses.replace(pipe, enhancer=enhancer), inputs, Controls(), hooks, _size=(64, 64))
    assert generated.prompt == "a red cat"
    assert any(
        level == "WARN" and "prompt_enhancer failed" in message and "original prompt" in message
        for message, level in hooks.logs
    )


def test_openai_enhancer_is_deterministic_chat_completion() -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url == "http://llm.local/v1/chat/completions"
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [{"message": {"content": "  a detailed red cat  "}}]})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    enhancer = OpenAIEnhancer("http://llm.local/v1/", "tiny-llm", client=client)
    assert enhancer.enhance("a cat", seed=9) == "a detailed red cat"
    body = seen[0]
    assert body["model"] == "tiny-llm" and body["temperature"] == 0 and body["seed"] == 9
    assert body["messages"] == [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": "a cat"}]


def test_enhancer_backends_from_settings() -> None:
    device = torch.device("cpu")
    assert load_enhancer(Settings(), device) is None
    remote = load_enhancer(Settings(enhancer="openai:http://x/v1", enhancer_model="m", enhancer_timeout_s=7), device)
    assert isinstance(remote, OpenAIEnhancer) and remote.client.timeout.read == 7
    assert "authorization" not in remote.client.headers  # no key configured: none sent
    keyed = load_enhancer(Settings(enhancer="openai:http://x/v1", enhancer_model="m", enhancer_api_key="sk-1"), device)
    assert isinstance(keyed, OpenAIEnhancer) and keyed.client.headers["authorization"] == "Bearer sk-1"
    with pytest.raises(ConfigError):
        load_enhancer(Settings(enhancer="openai:http://x/v1"), device)
    with pytest.raises(ConfigError):
        load_enhancer(Settings(enhancer="magic"), device)


def test_canny_map_is_white_edges_on_black_rgb() -> None:
    edges = canny_map(photo())
    array = np.asarray(edges)
    assert edges.mode == "RGB" and edges.size == (160, 120)
    assert set(np.unique(array)) == {0, 255}
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()


def test_depth_map_is_min_max_grey_at_input_size() -> None:
    depth = build_tiny_depth_estimator()(photo(100, 70))
    array = np.asarray(depth)
    assert depth.mode == "RGB" and depth.size == (100, 70)
    assert array.min() == 0 and array.max() == 255
    assert (array[..., 0] == array[..., 2]).all()


def test_local_enhancer_is_greedy_and_deterministic(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, T5Tokenizer

    from reimagine.prompt import TINY_VOCAB

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    T5Tokenizer(vocab=TINY_VOCAB, extra_ids=0).save_pretrained(tmp_path)
    enhancer = load_enhancer(Settings(enhancer=f"local:{tmp_path}", offline=True), torch.device("cpu"))
    assert isinstance(enhancer, LocalEnhancer)
    enhancer.max_new_tokens = 8
    first = enhancer.enhance("a red cat", seed=1)
    assert first == enhancer.enhance("a red cat", seed=2)  # greedy: the seed plays no part
    assert isinstance(first, str) and first
