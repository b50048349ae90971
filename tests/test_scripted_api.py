"""The test server itself (tests/scripted_api.py), driven by the real ``openai`` client over real sockets.

Fast, no model. What the openai client (``max_retries=0``) raises for each fault, as checked below:

* :class:`Truncated` (fewer body bytes than ``Content-Length``, then EOF):
  ``openai.APIConnectionError`` whose ``__cause__`` is httpx's ``RemoteProtocolError``
  (this venv's openai runs on the ``httpx2`` fork: ``httpx2.RemoteProtocolError``)
  ("peer closed connection without sending complete message body");
* :class:`Drop`: ``openai.APIConnectionError`` (cause ``RemoteProtocolError``,
  "Server disconnected without sending a response.");
* ``Raw(502, "bad gateway", "text/plain")``: ``openai.InternalServerError`` (an
  ``APIStatusError``; any status >= 500 maps to it) with ``status_code == 502``;
* ``Raw(200, "<html>...", "text/html")``: NOT an error by default: ``create()`` returns the
  body as a ``str``; with ``_strict_response_validation=True`` it raises
  ``openai.APIResponseValidationError``;
* ``Raw(200, "not json", "application/json")``: a bare ``json.JSONDecodeError`` (not an
  ``openai.OpenAIError``!).
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from openai.types.chat import ChatCompletion

from scripted_api import Drop, Raw, Reply, ScriptedAPI, Status, Truncated

MESSAGES = [{"role": "user", "content": "Rank these."}]


def client(api: ScriptedAPI, timeout: float = 5.0, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.base_url, api_key="sk-test", max_retries=0, timeout=timeout, **kwargs)


def ask(c: openai.OpenAI, content: str = "Rank these."):
    return c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": content}])


# -- fault actions -----------------------------------------------------------------------------


def test_truncated_announces_the_whole_body_but_sends_half():
    with ScriptedAPI([Truncated("[2] > [1]")]) as api:
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
        conn.request("POST", "/v1/chat/completions", body=json.dumps({"model": "m", "messages": MESSAGES}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type") == "application/json"
        announced = int(resp.getheader("Content-Length"))
        with pytest.raises(http.client.IncompleteRead) as exc:
            resp.read()
        assert len(exc.value.partial) == announced // 2 and exc.value.expected == announced - announced // 2
        conn.close()
        assert api.wait_settled() and api.answered == [False]


def test_truncated_and_drop_raise_api_connection_error():
    with ScriptedAPI([Truncated("[2] > [1]"), Drop(), "[1] > [2]"]) as api:
        c = client(api)
        with pytest.raises(openai.APIConnectionError) as exc:
            ask(c)
        assert type(exc.value.__cause__).__name__ == "RemoteProtocolError"
        assert "complete message body" in str(exc.value.__cause__)
        with pytest.raises(openai.APIConnectionError) as exc:
            ask(c)
        assert type(exc.value.__cause__).__name__ == "RemoteProtocolError"
        assert ask(c).choices[0].message.content == "[1] > [2]"  # the client reconnects
        assert api.wait_settled() and api.answered == [False, False, True]


def test_raw_sends_exactly_the_given_status_type_headers_and_body():
    body = "<html>bad gateway</html>"
    with ScriptedAPI([Raw(502, body, content_type="text/html", headers={"X-Upstream": "down"})]) as api:
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
        conn.request("POST", "/v1/chat/completions", body=json.dumps({"model": "m", "messages": MESSAGES}))
        r = conn.getresponse()
        assert r.status == 502 and r.read().decode() == body
        assert r.getheader("Content-Type") == "text/html" and r.getheader("X-Upstream") == "down"
        conn.close()
        assert api.wait_settled() and api.answered == [True]


def test_raw_bodies_through_the_openai_client():
    html = "<html>bad gateway</html>"
    script = [
        Raw(502, "bad gateway", content_type="text/plain"),
        Raw(200, html, content_type="text/html"),
        Raw(200, html, content_type="text/html"),
        Raw(200, "not json", content_type="application/json"),
    ]
    with ScriptedAPI(script) as api:
        c = client(api)
        with pytest.raises(openai.InternalServerError) as exc:
            ask(c)
        assert exc.value.status_code == 502 and exc.value.response.text == "bad gateway"
        # a 200 that is not JSON: the lenient default client hands back the text...
        assert ask(c) == html
        # ...a strict one raises
        with pytest.raises(openai.APIResponseValidationError):
            ask(client(api, _strict_response_validation=True))
        with pytest.raises(json.JSONDecodeError):
            ask(c)
        assert api.wait_settled() and api.answered == [True] * 4


# -- latency and concurrency -------------------------------------------------------------------


def test_latency_is_served_concurrently_on_keep_alive_connections():
    latency, workers = 0.2, 32
    with ScriptedAPI(fallback=lambda req: Reply("[1] > [2]"), latency_s=latency) as api:
        c = client(api, timeout=30)
        ask(c)  # warm up (imports, first connection)
        for _ in range(2):  # the second wave reuses the pool's keep-alive connections
            t0 = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                replies = list(pool.map(lambda i: ask(c, f"q{i}"), range(workers)))
            wall = time.perf_counter() - t0
            assert all(r.choices[0].message.content == "[1] > [2]" for r in replies)
            assert latency <= wall < 0.5 * workers * latency, wall
        assert api.count == 1 + 2 * workers and api.unscripted == api.count
        assert api.wait_settled() and all(api.answered)


def test_latency_adds_to_the_action_delay():
    with ScriptedAPI([Reply("a", delay_s=0.2)], latency_s=0.2) as api:
        t0 = time.perf_counter()
        ask(client(api))
        assert time.perf_counter() - t0 >= 0.4


# -- answered flags and the on_request hook ----------------------------------------------------


def test_answered_flags_each_outcome():
    script = [
        Reply("[1] > [2]"),
        Status(429, headers={"Retry-After": "0"}),
        Drop(),
        Truncated(),
        Raw(502, "bad gateway", content_type="text/plain"),
        Reply("too late", delay_s=0.8),  # the client times out at 0.3 s and closes its socket
        Reply("[2] > [1]"),
    ]
    with ScriptedAPI(script) as api:
        for action in script:
            c = client(api, timeout=0.3) if action.delay_s else client(api)
            try:
                ask(c)
            except (openai.APIError, json.JSONDecodeError):
                pass
            c.close()
        assert api.wait_settled(5.0)
        assert api.answered == [True, True, False, False, True, False, True]
        assert len(api.answered) == len(api.requests) == len(api.request_headers) == api.count == 7
        assert api.request_headers[0]["authorization"] == "Bearer sk-test"


def test_on_request_sees_each_request_before_its_action_runs():
    seen: list[tuple[int, str, int, list[bool]]] = []

    def hook(index, body):
        seen.append((index, body["messages"][0]["content"], api.count, list(api.answered)))

    with ScriptedAPI(["a", "b"], on_request=hook) as api:
        c = client(api)
        ask(c, "first")
        ask(c, "second")
        api.wait_settled()
    # called with the 1-based index, the body, after recording and before answering
    assert seen == [(1, "first", 1, [False]), (2, "second", 2, [True, False])]


def test_a_raising_on_request_hook_does_not_break_the_server(capfd):
    def hook(index, body):
        raise RuntimeError("hook bug")

    with ScriptedAPI(["a"], on_request=hook) as api:
        assert ask(client(api)).choices[0].message.content == "a"
    assert "hook bug" in capfd.readouterr().err


CHILD = """
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1], api_key="sk-test", max_retries=0, timeout=30)
for i in range(3):
    c.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q{i}"}])
    print("got", i, flush=True)
"""


def test_on_request_can_kill_the_client_before_its_answer():
    proc: dict[str, subprocess.Popen] = {}

    def kill_at_second(index, body):
        if index == 2:
            proc["p"].kill()
            proc["p"].wait()  # reaped: its sockets are closed before the answer is due

    with ScriptedAPI(fallback=lambda req: "ok", on_request=kill_at_second) as api:
        proc["p"] = subprocess.Popen([sys.executable, "-c", CHILD, api.base_url], stdout=subprocess.PIPE, text=True)
        out, _ = proc["p"].communicate(timeout=60)
        assert api.wait_settled()
        assert proc["p"].returncode < 0 and out.split("\n")[0] == "got 0" and "got 1" not in out
        assert api.count == 2 and api.answered == [True, False]


def test_stop_drops_requests_still_waiting_out_a_delay():
    api = ScriptedAPI([Reply("slow", delay_s=30)]).start()
    errors: list[BaseException] = []

    def call():
        try:
            ask(client(api, timeout=60))
        except openai.APIError as e:
            errors.append(e)

    t = threading.Thread(target=call)
    t.start()
    while api.count == 0:
        time.sleep(0.01)
    t0 = time.perf_counter()
    api.stop()
    t.join(10)
    assert time.perf_counter() - t0 < 5 and api.answered == [False]
    assert len(errors) == 1 and isinstance(errors[0], openai.APIConnectionError)


# -- Batch API ---------------------------------------------------------------------------------


def batch_line(custom_id: str, content: str) -> dict:
    body = {"model": "scripted", "messages": [{"role": "user", "content": content}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def test_batch_round_trip_with_the_openai_client():
    lines = [batch_line(f"k{i}", f"question {i}") for i in range(5)]
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    hooked: list[int] = []
    script = ["[1] > [2]", Status(500), Drop(), Raw(200, '{"not": "a completion"}', content_type="application/json")]
    with ScriptedAPI(script, fallback=lambda req: Reply("[2] > [1]", prompt_tokens=7, completion_tokens=3),
                     on_request=lambda i, b: hooked.append(i), batch_polls_to_complete=3) as api:
        c = client(api)
        upload = c.files.create(file=("in.jsonl", data), purpose="batch")
        assert upload.id == "file-1" and upload.bytes == len(data) and upload.filename == "in.jsonl"
        assert upload.purpose == "batch" and upload.status == "processed" and upload.object == "file"
        assert c.files.retrieve(upload.id).bytes == len(data)
        assert c.files.content(upload.id).content == data

        batch = c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
                                 metadata={"run": "test"})
        assert batch.id == "batch-1" and batch.object == "batch" and batch.status == "validating"
        assert batch.input_file_id == upload.id and batch.endpoint == "/v1/chat/completions"
        assert batch.completion_window == "24h" and batch.metadata == {"run": "test"} and batch.output_file_id is None
        assert api.count == 0  # nothing answered before the batch completes

        statuses = []
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            batch = c.batches.retrieve(batch.id)
            statuses.append(batch.status)
        assert statuses == ["in_progress", "in_progress", "completed"]
        assert c.batches.retrieve(batch.id).status == "completed"  # stays so; not answered twice
        # completed: the 200 lines (the Raw 200 included); failed: the 500 line and the dropped one
        assert batch.request_counts.total == 5 and batch.request_counts.completed == 3
        assert batch.request_counts.failed == 2
        assert batch.completed_at and batch.in_progress_at and batch.output_file_id and batch.error_file_id

        out = [json.loads(x) for x in c.files.content(batch.output_file_id).text.splitlines()]
        errors = [json.loads(x) for x in c.files.content(batch.error_file_id).text.splitlines()]

        assert [r["custom_id"] for r in out] == ["k0", "k1", "k3", "k4"]
        assert all(r["error"] is None and r["id"] and r["response"]["request_id"] for r in out)
        codes = [r["response"]["status_code"] for r in out]
        assert codes == [200, 500, 200, 200]
        first = ChatCompletion.model_validate(out[0]["response"]["body"])
        assert first.choices[0].message.content == "[1] > [2]"
        assert out[1]["response"]["body"]["error"]["message"] == "scripted 500"
        assert out[2]["response"]["body"] == {"not": "a completion"}  # Raw: the body as it is
        last = ChatCompletion.model_validate(out[3]["response"]["body"])
        assert last.choices[0].message.content == "[2] > [1]" and last.usage.total_tokens == 10

        assert [(r["custom_id"], r["response"]) for r in errors] == [("k2", None)]
        assert errors[0]["error"]["code"] == "server_error"

        # every line went through the script/fallback like a chat request
        bodies = [x["body"] for x in lines]
        assert api.batch_requests == bodies and api.requests == bodies and hooked == [1, 2, 3, 4, 5]
        assert api.answered == [True, True, False, True, True] and api.unscripted == 1
        assert api.batch_creates == 1 and api.file_uploads == 1
        assert [b.id for b in c.batches.list().data] == ["batch-1"]


def test_batch_without_errors_has_no_error_file_and_cancel_stops_a_batch():
    data = json.dumps(batch_line("only", "q")).encode()
    with ScriptedAPI(fallback=lambda req: "[1] > [2]", batch_polls_to_complete=1) as api:
        c = client(api)
        upload = c.files.create(file=("in.jsonl", data), purpose="batch")
        done = c.batches.retrieve(c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                                   completion_window="24h").id)
        assert done.status == "completed" and done.error_file_id is None and done.output_file_id
        assert done.request_counts.total == done.request_counts.completed == 1

        cancelled = c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert c.batches.cancel(cancelled.id).status == "cancelled"
        assert c.batches.retrieve(cancelled.id).status == "cancelled"
        assert c.batches.cancel(done.id).status == "completed"  # a finished batch stays finished
        assert api.count == 1 and api.batch_creates == 2 and api.file_uploads == 1

        with pytest.raises(openai.NotFoundError):
            c.batches.retrieve("batch-404")
        with pytest.raises(openai.BadRequestError):
            c.batches.create(input_file_id="file-404", endpoint="/v1/chat/completions", completion_window="24h")
        assert c.files.delete(upload.id).deleted
        with pytest.raises(openai.NotFoundError):
            c.files.content(upload.id)


def test_concurrent_polls_answer_a_batch_once():
    data = "".join(json.dumps(batch_line(f"k{i}", f"q{i}")) + "\n" for i in range(20)).encode()
    with ScriptedAPI(fallback=lambda req: "[1] > [2]", batch_polls_to_complete=1) as api:
        c = client(api)
        upload = c.files.create(file=("in.jsonl", data), purpose="batch")
        batch = c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        with ThreadPoolExecutor(16) as pool:
            seen = list(pool.map(lambda _: c.batches.retrieve(batch.id).status, range(16)))
        assert set(seen) <= {"finalizing", "completed"} and "completed" in seen
        assert len(api.batch_requests) == 20
        assert len(c.files.content(c.batches.retrieve(batch.id).output_file_id).text.splitlines()) == 20
