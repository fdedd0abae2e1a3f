"""An OpenAI-compatible HTTP server for a forged agent (FastAPI; `agent-forge serve KEY`).

- `POST /v1/chat/completions`: `messages` (system, user, assistant with `tool_calls`, tool), `temperature`,
  `max_tokens`, `stream` (server-sent events, `data: [DONE]` at the end), `tools` (OpenAI function tools).
  The agent's own tools run inside the answer; a request's `tools` are shown to the model as extra tools,
  and a call to one ends the answer with `finish_reason: tool_calls` and the call in `tool_calls`, as
  OpenAI clients expect; the client answers with a `tool` message and the agent goes on from there.
  The answer's `content` is the text as the agent wrote it, its own calls and their results included.
- `GET /v1/models`: the one model served.
- Errors are OpenAI-style JSON: 400 for a bad request (with the offending field), 429 beyond
  `max_concurrency` requests in flight, 500 for a failure inside one request, which never stops the server.
  Generation is serialized on the model (one forward pass at a time); requests wait their turn.
"""
from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError

from .generate import Event, Generation, generate
from .markup import RESULT, Call, wrap
from .tools import Tool


class FunctionSpec(BaseModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolSpec(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionSpec


class ToolCallIn(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: dict[str, Any]


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    stream: bool = False
    tools: list[ToolSpec] | None = None
    seed: int | None = None


def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status)


def _args_text(spec: FunctionSpec, arguments: str) -> str:
    """A client's call arguments as the call's one line: the single string parameter's value, else the JSON."""
    try:
        parsed = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return arguments
    if isinstance(parsed, dict) and len(parsed) == 1 and isinstance(next(iter(parsed.values())), str):
        return next(iter(parsed.values()))
    return json.dumps(parsed, separators=(",", ":"))


def _arguments(spec: FunctionSpec, text: str) -> str:
    """The model's call text as OpenAI `arguments` (a JSON object): JSON as written, or the text as the first
    (required) parameter."""
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            return json.dumps(parsed)
    except json.JSONDecodeError:
        pass
    props = spec.parameters.get("properties") or {}
    name = (spec.parameters.get("required") or list(props) or ["input"])[0]
    return json.dumps({name: text})


def conversation_of(req: ChatRequest, client: dict[str, FunctionSpec]) -> tuple[str, list[tuple[str, str]], str, str]:
    """(system text, earlier turns, the open question, the assistant's prefix) of a request's messages."""
    system = "\n".join(m.content or "" for m in req.messages if m.role in ("system", "developer"))
    chat = [m for m in req.messages if m.role not in ("system", "developer")]
    turns, question, prefix = [], None, ""
    i = 0
    while i < len(chat):
        m = chat[i]
        if m.role == "user":
            if question is not None:
                raise ValueError("two user messages in a row without an assistant answer between them")
            question, prefix = m.content or "", ""
        elif m.role == "assistant":
            if question is None:
                raise ValueError("an assistant message that answers no user message")
            text = m.content or ""
            for call in m.tool_calls or []:
                name = call.function.get("name", "")
                if name not in client:
                    raise ValueError(f"tool call to {name!r}, which is not among this request's tools")
                text += f"<{name}>{_args_text(client[name], call.function.get('arguments', ''))}</{name}>"
                result = next((t for t in chat[i + 1:] if t.role == "tool" and t.tool_call_id == call.id), None)
                if result is not None:
                    text += wrap(RESULT, result.content or "")
            if i + 1 < len(chat) and any(t.role == "tool" for t in chat[i + 1:]) and m.tool_calls:
                prefix = text  # the answer goes on after the client's results
            else:
                turns.append((question, text.strip()))
                question = None
        elif m.role == "tool" and not any(c.id == m.tool_call_id for a in chat[:i] for c in (a.tool_calls or [])):
            raise ValueError(f"a tool message for call {m.tool_call_id!r}, which no assistant message made")
        i += 1
    if question is None:
        raise ValueError("the last message must be a user message (or tool results for the last assistant call)")
    return system, turns, question, prefix


class AgentServer:
    """The model, its runtime and the limits, behind the HTTP routes."""

    def __init__(self, model, tokenizer, runtime, name: str, max_concurrency: int = 4, max_new_tokens: int = 96):
        self.model, self.tok, self.runtime, self.name = model, tokenizer, runtime, name
        self.max_new_tokens = max_new_tokens
        self.slots = threading.BoundedSemaphore(max_concurrency)
        self.limit = max_concurrency
        self.model_lock = threading.Lock()

    def run(self, req: ChatRequest, on_event=None) -> tuple[Generation, int]:
        client = {t.function.name: t.function for t in req.tools or []}
        system, turns, question, prefix = conversation_of(req, client)
        extra = [Tool(n, f.description, lambda a: "", example=f"<{n}>...</{n}>") for n, f in client.items()]
        prompt = self.runtime.prompt(question, turns, extra, system)
        with self.model_lock, self.runtime.expert(question):
            g = generate(self.model, self.tok, prompt, self.runtime.tools, prefix=prefix,
                         max_new_tokens=req.max_tokens or self.max_new_tokens, max_calls=self.runtime.spec.max_calls,
                         temperature=req.temperature, seed=req.seed or 0, pause_on=set(client), on_event=on_event)
        return g, len(self.tok(prompt + prefix, add_special_tokens=False).input_ids)

    def message(self, g: Generation, client: dict[str, FunctionSpec], prefix_len: int) -> dict:
        text = g.text[prefix_len:]
        msg: dict[str, Any] = {"role": "assistant", "content": text}
        if g.pending is not None:
            call: Call = g.pending
            msg["content"] = text[: text.rfind(f"<{call.tool}>")] if f"<{call.tool}>" in text else text
            msg["tool_calls"] = [{"id": f"call_{uuid.uuid4().hex[:20]}", "type": "function",
                                  "function": {"name": call.tool, "arguments": _arguments(client[call.tool], call.args)}}]
        return msg


def create_app(server: AgentServer) -> FastAPI:
    app = FastAPI(title="Agent Forge agent", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", []) if x != "body")
        return error(400, f"{loc}: {first.get('msg', 'invalid request')}", param=loc or None)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": server.name, "object": "model", "created": 0, "owned_by": "agent-forge"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "the request body is not JSON")
        try:
            req = ChatRequest.model_validate(body)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            return error(400, f"{loc}: {first['msg']}", param=loc)
        client = {t.function.name: t.function for t in req.tools or []}
        try:
            _, _, _, prefix = conversation_of(req, client)
        except ValueError as e:
            return error(400, str(e), param="messages")
        if not server.slots.acquire(blocking=False):
            return error(429, f"{server.limit} requests are in flight, the most this server takes; retry shortly",
                         "rate_limit_error")
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not req.stream:
            try:
                g, n_prompt = await asyncio.to_thread(server.run, req)
            except Exception as e:  # noqa: BLE001 - one request's failure is its own 500, never the server's end
                return error(500, f"the request failed: {type(e).__name__}: {e}", "server_error")
            finally:
                server.slots.release()
            return {"id": rid, "object": "chat.completion", "created": created, "model": server.name,
                    "choices": [{"index": 0, "message": server.message(g, client, len(prefix)),
                                 "finish_reason": g.finish}],
                    "usage": {"prompt_tokens": n_prompt, "completion_tokens": g.model_tokens,
                              "total_tokens": n_prompt + g.model_tokens}}
        return StreamingResponse(_stream(server, req, client, prefix, rid, created), media_type="text/event-stream")

    return app


async def _stream(server: AgentServer, req: ChatRequest, client, prefix: str, rid: str, created: int):
    """Server-sent events: a role chunk, content chunks as the model writes, a final chunk."""
    events: queue.Queue = queue.Queue()
    box: dict = {}

    def work():
        try:
            box["g"], _ = server.run(req, on_event=events.put)
        except Exception as e:  # noqa: BLE001 - reported in the stream, the server goes on
            box["error"] = e
        finally:
            events.put(None)
            server.slots.release()

    def chunk(delta: dict, finish: str | None = None) -> str:
        return "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                      "model": server.name, "choices": [{"index": 0, "delta": delta,
                                                                         "finish_reason": finish}]}) + "\n\n"

    threading.Thread(target=work, daemon=True).start()
    yield chunk({"role": "assistant", "content": ""})
    while True:
        e: Event | None = await asyncio.to_thread(events.get)
        if e is None:
            break
        if e.kind in ("text", "result"):  # a call's text went out token by token as the model wrote it
            yield chunk({"content": e.text})
    if "error" in box:
        yield "data: " + json.dumps({"error": {"message": f"the request failed: {box['error']}",
                                               "type": "server_error"}}) + "\n\n"
    else:
        g = box["g"]
        if g.pending is not None:
            msg = server.message(g, client, len(prefix))
            calls = [{"index": 0, **c} for c in msg["tool_calls"]]
            yield chunk({"tool_calls": calls})
        yield chunk({}, g.finish)
    yield "data: [DONE]\n\n"
