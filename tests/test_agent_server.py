"""The OpenAI-compatible server, driven by the official `openai` client against a tiny model on 127.0.0.1:
plain chat, streaming, a client tool round trip, malformed requests, the concurrency limit, one request
failing without taking the server down; and the chat REPL."""
from __future__ import annotations

import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def agent(tiny_model_dir, tmp_path_factory):
    from agent_forge_core.agent.runtime import Runtime
    from agent_forge_core.agent.settings import AgentSettings, RuntimeSpec
    from agent_forge_core.model_io import load_model

    tmp = tmp_path_factory.mktemp("agent")
    model, tok = load_model(str(tiny_model_dir))
    settings = AgentSettings(memory=str(tmp / "m.sqlite"), index_dir=str(tmp / "idx"))
    runtime = Runtime.open(None, model, tok, settings, spec=RuntimeSpec(tools=["calc", "mem_read", "mem_write"]))
    return model, tok, runtime


@pytest.fixture(scope="module")
def served(agent):
    import uvicorn

    from agent_forge_core.agent.server import AgentServer, create_app

    model, tok, runtime = agent
    server = AgentServer(model, tok, runtime, "tiny-agent", max_concurrency=2, max_new_tokens=8)
    port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield server, f"http://127.0.0.1:{port}/v1"
    uv.should_exit = True
    thread.join(10)


@pytest.fixture
def client(served):
    from openai import OpenAI

    return OpenAI(base_url=served[1], api_key="unused", max_retries=0, timeout=60)


def test_models_plain_chat_and_streaming_agree(client):
    assert [m.id for m in client.models.list().data] == ["tiny-agent"]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    r = client.chat.completions.create(model="tiny-agent", messages=msgs, max_tokens=6)
    text = r.choices[0].message.content
    assert isinstance(text, str) and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 6 and r.usage.prompt_tokens > 10
    chunks = list(client.chat.completions.create(model="tiny-agent", messages=msgs, max_tokens=6, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text  # greedy: the same answer
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_a_client_tool_round_trip(client, monkeypatch):
    """The model calls the client's tool: the answer ends with `tool_calls`; the client's result goes back in."""
    import agent_forge_core.agent.server as server_mod

    real, prompts = server_mod.generate, []

    def model_calls_the_weather_tool(model, tok, prompt, tools, prefix="", **kw):
        prompts.append((prompt, prefix))
        if not prefix:  # the first turn: the model writes the call (a tiny random model would not)
            return real(model, tok, prompt, tools, prefix=" <get_weather>Paris</get_weather>", **kw)
        return real(model, tok, prompt, tools, prefix=prefix, **kw)

    monkeypatch.setattr(server_mod, "generate", model_calls_the_weather_tool)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                               "required": ["city"]}}}]
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model="tiny-agent", messages=msgs, tools=tools, max_tokens=4)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert "get_weather: Weather in a city." in prompts[0][0]  # the client's tool was shown to the model
    msgs += [choice.message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    second = client.chat.completions.create(model="tiny-agent", messages=msgs, tools=tools, max_tokens=4)
    assert second.choices[0].finish_reason in ("stop", "length")
    assert prompts[1][1] == " <get_weather>Paris</get_weather><result>sunny, 21 C</result>"


@pytest.mark.parametrize("body, needle", [
    ({}, "messages"), ({"messages": []}, "messages"), ({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 9}, "temperature"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "answers no user message"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "r"}]},
     "no assistant message made"),
])
def test_malformed_requests_get_openai_style_400s(served, body, needle):
    import httpx

    r = httpx.post(f"{served[1]}/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and needle in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "invalid_request_error"
    bad = httpx.post(f"{served[1]}/chat/completions", content=b"{not json", timeout=30)
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]["message"]


def test_concurrency_limit_and_a_failing_request_do_not_take_the_server_down(client, served, monkeypatch):
    import openai

    import agent_forge_core.agent.server as server_mod

    real = server_mod.generate

    def slow(*a, **kw):
        time.sleep(0.5)
        return real(*a, **kw)

    monkeypatch.setattr(server_mod, "generate", slow)

    def ask(i):
        try:
            client.chat.completions.create(model="tiny-agent", messages=[{"role": "user", "content": f"hi {i}"}],
                                           max_tokens=2)
            return "ok"
        except openai.RateLimitError as e:
            assert "requests are in flight" in str(e)
            return "429"

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(ask, range(6)))
    assert got.count("ok") >= 2 and got.count("429") >= 1, got  # 2 in flight at most, the rest told to retry

    def broken(*a, **kw):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(server_mod, "generate", broken)
    with pytest.raises(openai.InternalServerError, match="injected failure"):
        client.chat.completions.create(model="tiny-agent", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    monkeypatch.setattr(server_mod, "generate", real)
    ok = client.chat.completions.create(model="tiny-agent", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert ok.choices[0].message.role == "assistant"  # the server is still up
    assert served[0].slots.acquire(blocking=False)  # and every slot was given back
    served[0].slots.release()


def test_the_chat_repl_streams_remembers_and_takes_commands(agent):
    from agent_forge_core.agent.chat import chat

    model, tok, runtime = agent
    runtime.memory.write("cat", "41")
    out = io.StringIO()
    rc = chat(model, tok, runtime, max_new_tokens=4, stdin=io.StringIO("hello\n/tools\n/memory\n/reset\n/quit\n"),
              stdout=out)
    text = out.getvalue()
    assert rc == 0 and "calc: Evaluate an arithmetic expression" in text and "cat = 41" in text
    assert "(conversation forgotten; memory kept)" in text and text.count("> ") >= 5
