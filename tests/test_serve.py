"""``seqedge serve`` over real HTTP: a uvicorn server on loopback and the official ``openai`` client."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import openai
import pytest

import seqedge
from seqedge.serve import SchedulerConfig, ServeConfig, build_server
from seqedge.serve.server import bind_socket
from seqedge.serve.text import CHAT_STOP, render_chat
from seqedge.tokenizer import ByteTokenizer

from _artifacts import onnx_artifact

TOK = ByteTokenizer()
MODEL = "tiny"
SLOTS, QUEUE = 2, 2
TIMEOUT_S = 30
# A prompt whose greedy continuation by the test model runs past any max_tokens used here without EOS (checked
# where it matters), to hold slots busy.
LONG_PROMPT = "def main("


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A running server (2 slots, 2 waiting) on a free loopback port; stopped after the module."""
    artifact = onnx_artifact(tmp_path_factory, "gated")
    config = ServeConfig(str(artifact), "onnxruntime", host="127.0.0.1", port=0, model_name=MODEL,
                         max_tokens_limit=100_000, scheduler=SchedulerConfig(slots=SLOTS, max_queue=QUEUE))
    server = build_server(config)
    sock = bind_socket("127.0.0.1", 0)
    uv = server.uvicorn_server()
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT_S
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield SimpleNamespace(url=f"http://127.0.0.1:{sock.getsockname()[1]}", scheduler=server.scheduler,
                          config=server.config)
    uv.should_exit = True
    thread.join(TIMEOUT_S)
    assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def session(served):
    return seqedge.load(served.config.artifact, "onnxruntime")


def alone(session, prompt: str, max_tokens: int, temperature: float = 0.0, seed: int | None = None,
          top_k: int = 0, stop: str | None = None) -> str:
    """The single-stream Session's text, which the server must reproduce for the same request."""
    tokens = list(session.generate(TOK.encode(prompt, add_bos=True), max_tokens, temperature=temperature,
                                   top_k=top_k, seed=seed, stop_tokens=(TOK.eos_id,)))
    text = TOK.decode(tokens)
    return text[:text.find(stop)] if stop and stop in text else text


def http(served, path: str, body: bytes | dict | None = None) -> tuple[int, dict]:
    """GET (no body) or POST ``path``; the status and the JSON answer, errors included."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(served.url + path, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def health(served) -> dict:
    return http(served, "/health")[1]


def wait_until_idle(served) -> dict:
    deadline = time.monotonic() + TIMEOUT_S
    while (h := health(served))["active"] or h["waiting"]:
        assert time.monotonic() < deadline, f"slots still busy: {h}"
        time.sleep(0.05)
    return h


def test_models_and_health(served, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    h = health(served)
    assert h["status"] == "ok" and h["runtime"] == "onnxruntime" and h["variant"] == "onnx/fp32"
    assert h["slots"] == SLOTS and h["batched_step"] is True and h["state_bytes_per_stream"] > 0


def test_completion_streamed_and_not_equal_the_single_stream_session(client, session):
    expected = alone(session, "import os\n", 24)
    whole = client.completions.create(model=MODEL, prompt="import os\n", max_tokens=24, temperature=0)
    assert whole.choices[0].text == expected
    assert whole.usage.prompt_tokens == len("import os\n") + 1 and whole.usage.completion_tokens <= 24
    chunks = list(client.completions.create(model=MODEL, prompt="import os\n", max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_chat_streamed_and_not(client, session):
    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "a loop"}]
    prompt = render_chat([(m["role"], m["content"]) for m in messages])
    args = dict(model=MODEL, messages=messages, max_tokens=20, temperature=0.8, seed=3, extra_body={"top_k": 50})
    expected = alone(session, prompt, 20, temperature=0.8, seed=3, top_k=50, stop=CHAT_STOP)
    whole = client.chat.completions.create(**args)
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].message.content == expected
    chunks = list(client.chat.completions.create(**args, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_concurrent_clients_get_their_single_stream_outputs(served, client, session):
    """More clients than slots at once (the rest wait in the queue), greedy and seeded sampling, streamed and
    not: each gets the single-stream Session's output."""
    prompts = ["class A:", "x = [", "for i in range(", "# note\n", "if x:", "return"]
    settings = [dict(max_tokens=12 + 4 * i, temperature=(0.0 if i % 3 == 0 else 1.0), seed=i)
                for i in range(len(prompts))]
    expected = [alone(session, p, **kw) for p, kw in zip(prompts, settings)]

    def ask(i: int) -> str:
        if i % 2:
            return client.completions.create(model=MODEL, prompt=prompts[i], **settings[i]).choices[0].text
        stream = client.completions.create(model=MODEL, prompt=prompts[i], stream=True, **settings[i])
        return "".join(c.choices[0].text for c in stream)

    before = health(served)
    with ThreadPoolExecutor(SLOTS + QUEUE) as pool:
        assert list(pool.map(ask, range(len(prompts)))) == expected
    after = wait_until_idle(served)
    assert after["completed"] == before["completed"] + len(prompts)
    assert after["step_calls"] - before["step_calls"] < after["rows_stepped"] - before["rows_stepped"]


def test_full_server_answers_429_and_disconnects_free_the_slots(served, client):
    """Hold every slot and queue place with long streams: the next request gets 429; closing the streams
    mid-way cancels them, and the slots serve new requests."""
    before = wait_until_idle(served)
    streams = [client.completions.create(model=MODEL, prompt=LONG_PROMPT, max_tokens=100_000, temperature=0,
                                         stream=True) for _ in range(SLOTS + QUEUE)]
    for stream in streams[:SLOTS]:
        next(iter(stream))                             # the running ones have produced text
    h = health(served)
    assert (h["active"], h["waiting"]) == (SLOTS, QUEUE), f"the long streams ended early: {h}"
    with pytest.raises(openai.RateLimitError) as err:
        client.completions.create(model=MODEL, prompt="x", max_tokens=2)
    assert err.value.status_code == 429 and "slots are busy" in err.value.message
    for stream in streams:
        stream.close()
    after = wait_until_idle(served)
    assert after["cancelled"] - before["cancelled"] == SLOTS + QUEUE
    assert after["rejected"] - before["rejected"] == 1
    assert client.completions.create(model=MODEL, prompt="x", max_tokens=2).choices[0].finish_reason


def test_a_client_that_stops_waiting_for_a_whole_answer_frees_its_slot(served):
    """A non-streaming request whose client times out and closes the connection is cancelled."""
    before = wait_until_idle(served)
    body = json.dumps({"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 100_000, "temperature": 0}).encode()
    request = urllib.request.Request(served.url + "/v1/completions", data=body,
                                     headers={"content-type": "application/json"})
    with pytest.raises((urllib.error.URLError, TimeoutError)):    # urllib closes the connection on its timeout
        urllib.request.urlopen(request, timeout=1.0)
    after = wait_until_idle(served)
    assert after["cancelled"] - before["cancelled"] == 1 and after["completed"] == before["completed"]


@pytest.mark.parametrize("kwargs, error, param", [
    ({"max_tokens": 0}, "BadRequestError", "max_tokens"),
    ({"max_tokens": 100_001}, "BadRequestError", "max_tokens"),
    ({"temperature": -0.5}, "BadRequestError", "temperature"),
    ({"top_p": 0}, "BadRequestError", "top_p"),
    ({"n": 2}, "BadRequestError", "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "BadRequestError", "stop"),
    ({"extra_body": {"logprobs": 3}}, "BadRequestError", "logprobs"),
    ({"model": "gpt-4"}, "NotFoundError", "model"),
])
def test_bad_requests_get_clear_4xx_errors(client, kwargs, error, param):
    args = {"model": MODEL, "prompt": "x", "max_tokens": 4, **kwargs}
    with pytest.raises(getattr(openai, error)) as err:
        client.completions.create(**args)
    assert 400 <= err.value.status_code < 500 and err.value.body["param"] == param, err.value.body


def test_malformed_bodies_get_400(served):
    path = "/v1/chat/completions"
    status, body = http(served, path, b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = http(served, path, {"model": MODEL, "messages": []})
    assert status == 400 and "messages" in body["error"]["message"]
    status, body = http(served, path, {"model": MODEL, "messages": [{"role": "tool", "content": "x"}]})
    assert status == 400 and "role" in body["error"]["message"]


def test_an_empty_text_prompt_starts_from_bos_and_an_empty_id_list_is_refused(served):
    status, body = http(served, "/v1/completions", {"prompt": "", "max_tokens": 2, "temperature": 0})
    assert status == 200 and body["usage"]["prompt_tokens"] == 1, body
    status, body = http(served, "/v1/completions", {"prompt": [], "max_tokens": 2})
    assert status == 400 and body["error"]["param"] == "prompt", body


def test_a_request_without_a_model_name_goes_to_the_served_model(served):
    status, body = http(served, "/v1/completions", {"prompt": "x", "max_tokens": 2, "temperature": 0})
    assert status == 200 and body["model"] == MODEL and body["choices"][0]["finish_reason"], body


def test_503_while_the_scheduler_is_stopped(served, client):
    wait_until_idle(served)
    served.scheduler.stop()
    try:
        with pytest.raises(openai.InternalServerError) as err:
            client.completions.create(model=MODEL, prompt="x", max_tokens=2)
        assert err.value.status_code == 503
        status, body = http(served, "/health")
        assert status == 503 and body["status"] == "unavailable"
    finally:
        served.scheduler.start()
    assert client.completions.create(model=MODEL, prompt="x", max_tokens=2).choices[0].finish_reason
