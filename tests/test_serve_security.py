"""`slm serve` under hostile use: the API key, CORS, random and hostile request bodies (hypothesis), half-sent
bodies, clients that leave before the first byte, and model text that is HTML (headless Chromium).
Loopback only. The model here has random weights (nothing in these tests needs it trained)."""

import json
import socket
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import slmkit.serve  # noqa: E402
from slmkit.config import RunConfig, ServeConfig  # noqa: E402
from slmkit.generate import Sequence, generate  # noqa: E402
from slmkit.model import GPT  # noqa: E402
from slmkit.runs import BEST, load_run, save_weights, write_run_files  # noqa: E402
from slmkit.tokenizer import CharTokenizer, ChatTokenizer  # noqa: E402

from conftest import TINY_TEXT  # noqa: E402
from test_serve import LiveServer, chromium_driver, slow_stream  # noqa: E402,F401 (slow_stream: a fixture)

KEY = "sk-test-0123456789"
PAYLOAD = "<img src=x onerror=\"window.pwned=1;document.title='pwned'\"><script>window.pwned=2</script></span><b>b</b>&amp;"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A chat run folder (char tokenizer with the chat markers) with random weights: milliseconds to make."""
    root = tmp_path_factory.mktemp("serve_security")
    cfg = RunConfig()
    cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size = 2, 2, 32, 32
    tokenizer = ChatTokenizer(CharTokenizer.fit([TINY_TEXT + PAYLOAD]))
    cfg.model.vocab_size, cfg.tokenizer.kind = tokenizer.vocab_size, "char"
    write_run_files(root / "run", cfg, tokenizer)
    save_weights(GPT(cfg.model), root / "run" / BEST)
    return root / "run"


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir)


def error_of(reply):
    """The OpenAI-shaped error of a reply (asserting its shape): {message, type, param, code}."""
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
    assert error["message"] and "\n" not in error["message"]
    return error


# ---------------------------------------------------------------- the API key and CORS


def test_api_key_guards_every_path_but_health_and_the_page(run):
    with TestClient(slmkit.serve.create_app(run, ServeConfig(api_key=KEY))) as http:
        assert http.get("/health").status_code == 200 and http.get("/").status_code == 200
        for method, path in [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                             ("POST", "/tokenize"), ("GET", "/tokenizer_info"), ("GET", "/v1/nothing")]:
            for headers, why in [({}, "no API key"), ({"Authorization": f"Bearer {KEY}x"}, "a wrong API key"),
                                 ({"Authorization": KEY}, "a wrong API key")]:
                reply = http.request(method, path, json={"prompt": "And", "max_tokens": 2}, headers=headers)
                assert reply.status_code == 401, (path, headers)
                error = error_of(reply)
                assert error["type"] == "authentication_error" and error["message"].startswith(why)
                assert "Authorization: Bearer KEY" in error["message"] and reply.headers["www-authenticate"] == "Bearer"
        good = {"Authorization": f"Bearer {KEY}"}
        assert http.post("/v1/completions", json={"max_tokens": 2}, headers=good).status_code == 200
        assert http.get("/v1/models", headers=good).json()["data"][0]["id"] == "run"


def test_the_openai_clients_api_key_works(run):
    openai = pytest.importorskip("openai")
    live = LiveServer(slmkit.serve.create_app(run, ServeConfig(api_key=KEY)))
    try:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=KEY, max_retries=0)
        out = client.completions.create(model="run", prompt="And", max_tokens=5, temperature=0)
        assert out.choices[0].text == generate(run.model, run.tokenizer, "And", max_new_tokens=5, temperature=0)
        reply = client.chat.completions.create(model="run", messages=[{"role": "user", "content": "And"}], max_tokens=3)
        assert reply.choices[0].message.role == "assistant"
        with pytest.raises(openai.AuthenticationError, match="wrong API key"):
            openai.OpenAI(base_url=f"{live.url}/v1", api_key="guess", max_retries=0).models.list()
    finally:
        live.close()


class _NoUvicorn:
    """Stands in for uvicorn.Server in slm serve: keeps the app, serves nothing."""

    apps = []

    def __init__(self, config):
        _NoUvicorn.apps.append(config.app)

    def run(self, sockets):
        sockets[0].close()


@pytest.mark.parametrize("host, key, env, warned", [
    ("0.0.0.0", "", "", True), ("::", "", "", True), ("0.0.0.0", KEY, "", False), ("0.0.0.0", "", KEY, False),
    ("127.0.0.1", "", "", False), ("::1", "", "", False), ("localhost", "", "", False),
])
def test_listening_beyond_loopback_without_a_key_warns(run_dir, monkeypatch, capsys, host, key, env, warned):
    """serve.api_key or SLM_API_KEY; the warning is one line on stderr. (No port is opened beyond loopback: the
    listening socket is made on 127.0.0.1 whatever the host.)"""
    real = socket.create_server
    monkeypatch.setattr(slmkit.serve.socket, "create_server", lambda address, family: real(("127.0.0.1", 0)))
    monkeypatch.setattr(slmkit.serve.uvicorn, "Server", _NoUvicorn)
    monkeypatch.setenv("SLM_API_KEY", env) if env else monkeypatch.delenv("SLM_API_KEY", raising=False)
    slmkit.serve.serve(run_dir, host=host, port=0, overrides={"serve.api_key": key} if key else {})
    err = capsys.readouterr().err
    assert (err.count("\n") == 1 and "warning: listening on" in err and "SLM_API_KEY" in err) if warned else err == ""
    with TestClient(_NoUvicorn.apps[-1]) as http:
        assert http.get("/v1/models").status_code == (401 if key or env else 200)


def test_cors_is_off_unless_origins_are_listed(run):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    with TestClient(slmkit.serve.create_app(run, ServeConfig())) as http:
        assert "access-control-allow-origin" not in http.options("/v1/completions", headers=preflight).headers
        reply = http.get("/v1/models", headers={"Origin": "https://app.example"})
        assert reply.status_code == 200 and "access-control-allow-origin" not in reply.headers
    cfg = ServeConfig(cors_origins="https://app.example, http://localhost:3000", api_key=KEY)
    with TestClient(slmkit.serve.create_app(run, cfg)) as http:
        reply = http.options("/v1/completions", headers=preflight)  # a preflight carries no key: it is answered
        assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in reply.headers["access-control-allow-headers"].lower()
        refused = http.get("/v1/models", headers={"Origin": "https://app.example"})  # 401, readable by the page
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "https://app.example"
        other = http.options("/v1/completions", headers={**preflight, "Origin": "https://evil.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        ok = http.get("/v1/models", headers={"Origin": "http://localhost:3000", "Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://localhost:3000"


# ---------------------------------------------------------------- hostile bodies (in-process, no sockets)

FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_k", "top_p",
          "repetition_penalty", "stop", "seed", "stream", "n", "logprobs", "echo", "stream_options", "tokens"]
scalars = (st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=30) | st.sampled_from(["And", "", "\x00", "\ud800", "é" * 500, "<|end|>", "And God"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                      max_leaves=12)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "bot", 3]),
                                           "content": values}), max_size=3)
bodies = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), values, max_size=6) | st.fixed_dictionaries(
    {"messages": messages}, optional={k: values for k in ("max_tokens", "temperature", "stop", "n", "stream", "seed")})
OPENAI_TYPES = {"invalid_request_error", "not_found_error", "server_error", "authentication_error", "timeout"}


@pytest.fixture(scope="module")
def hostile(run):
    """An in-process client of a server whose answers are short (max_tokens at most 4)."""
    with TestClient(slmkit.serve.create_app(run, ServeConfig(max_tokens_limit=4, max_prompt_chars=200))) as http:
        yield http


def check_answer(reply, path):
    """Never a 500; an error is OpenAI-shaped and a 422 names its field; a 200 is a completion."""
    assert reply.status_code != 500 and reply.status_code in (200, 400, 404, 405, 413, 422), reply.text
    if reply.status_code == 200:
        text = reply.text
        if text.startswith("data: "):  # streamed: chunks, then [DONE] (or an in-band error)
            assert text.rstrip().endswith("data: [DONE]") or '"error"' in text
        elif path in ("/tokenize", "/detokenize"):
            assert set(reply.json()) in ({"tokens", "count", "max_model_len"}, {"prompt"}), text
        else:
            assert reply.json()["object"] in ("text_completion", "chat.completion"), text
        return
    error = error_of(reply)
    assert error["type"] in OPENAI_TYPES
    if reply.status_code == 422:
        assert error["param"] and error["param"] in error["message"], error


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies, path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]))
@example(body={"temperature": float("nan"), "max_tokens": 2}, path="/v1/completions")
@example(body={"top_p": float("inf")}, path="/v1/chat/completions")
@example(body={"prompt": [[1, 2], [-5]]}, path="/v1/completions")
@example(body={"prompt": [1, 2, 10**20]}, path="/v1/completions")
@example(body={"messages": [{"role": "user", "content": "x" * 100_000}]}, path="/v1/chat/completions")
@example(body={"messages": [{"role": "user", "content": "And"}], "n": 16, "max_tokens": 4}, path="/v1/chat/completions")
@example(body={"prompt": "And", "stream": True, "n": 3, "logprobs": 5, "echo": True}, path="/v1/completions")
@example(body={"tokens": [10**9, -1]}, path="/detokenize")
def test_random_json_bodies_never_crash_the_server(hostile, body, path):
    check_answer(hostile.post(path, content=json.dumps(body, allow_nan=True), headers={"Content-Type": "application/json"}), path)


DEEP = 100_000


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.binary(max_size=200) | st.sampled_from([
        b"", b"\xff\xfe\x00", b'{"prompt": "\xc3\x28"}', b"[" * DEEP + b"]" * DEEP, b'{"prompt": ' + b"[" * DEEP,
        b'{"prompt": ' + b"[" * 900 + b"]" * 900 + b"}", b'{"stop": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001,
        b'{"max_tokens": ' + b"9" * 5000 + b"}",  # an integer of > 4300 digits: Python's JSON refuses it
        b"NaN", b"null", b'"x"', b"prompt=And&max_tokens=3", b'{"prompt": "And"} trailing', b"x" * 200_000,
        json.dumps({"prompt": "And" * 100_000}).encode(),
    ]),
    content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", "",
                                  "multipart/form-data; boundary=x", "application/json; charset=latin-1"]),
    path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]),
)
def test_raw_bodies_invalid_utf8_deep_nesting_and_huge_bodies(hostile, raw, content_type, path):
    check_answer(hostile.post(path, content=raw, headers={"Content-Type": content_type}), path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND"]),
    path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/", "/tokenize",
                          "/v1/embeddings", "/v1/completions/", "/v2/completions", "/%00", "/..%2f..%2fetc%2fpasswd",
                          "/" + "a" * 5000, "/v1/models/run", "/docs", "/openapi.json"]),
)
def test_unknown_paths_and_methods_get_an_openai_shaped_error(hostile, method, path):
    reply = hostile.request(method, path)
    assert reply.status_code != 500
    if reply.status_code == 200:
        assert (method, path) in {(m, p) for m in ("GET", "HEAD") for p in ("/v1/models", "/health", "/")} or method == "POST"
        return
    if method != "HEAD":  # a HEAD answer has no body
        assert error_of(reply)["type"] in OPENAI_TYPES and reply.status_code in (400, 404, 405, 413, 422)


# ---------------------------------------------------------------- slow clients, and clients that leave early


def post_raw(port, body, declared=None):
    """A socket that has sent a POST /v1/completions with `body` (and Content-Length `declared`)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared if declared is not None else len(body)}\r\n\r\n").encode()
    sock.sendall(head + body)
    return sock


def test_a_half_sent_body_gets_408_within_the_body_timeout_and_others_are_served(run):
    live = LiveServer(slmkit.serve.create_app(run, ServeConfig(body_timeout=0.5)))
    port = int(live.url.rsplit(":", 1)[1])
    try:
        body = json.dumps({"prompt": "And", "max_tokens": 3}).encode()
        stalled = [post_raw(port, body[:10], declared=len(body)) for _ in range(3)]  # half a body each, then nothing
        with httpx.Client(base_url=live.url, timeout=30) as client:  # meanwhile others are served
            assert client.post("/v1/completions", json={"prompt": "And", "max_tokens": 3}).status_code == 200
            assert client.get("/health").status_code == 200
        for sock in stalled:
            answer = b""
            while chunk := sock.recv(65536):  # the server closes the connection after its answer
                answer += chunk
            sock.close()
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
            assert "serve.body_timeout=0.5" in error["message"]
        with httpx.Client(base_url=live.url, timeout=30) as client:
            assert client.post("/v1/completions", json={"prompt": "And", "max_tokens": 3}).status_code == 200
    finally:
        live.close()


def test_a_stream_whose_client_leaves_before_the_first_byte_frees_its_slot(run, slow_stream):
    """One slot. A streamed request (200 tokens asked) is dropped right after it is sent; it leaves the batch at
    the next step, so the next request is served at once. A stream dropped while it waits for the slot never
    enters the batch."""
    app = slmkit.serve.create_app(run, ServeConfig(max_batch=1, max_tokens_limit=200))
    live = LiveServer(app)
    port = int(live.url.rsplit(":", 1)[1])
    scheduler = app.state.server.scheduler
    stream = json.dumps({"prompt": "And", "max_tokens": 200, "temperature": 1.0, "stream": True}).encode()
    try:
        with httpx.Client(base_url=live.url, timeout=60) as client:
            post_raw(port, stream).close()  # gone before any byte of the answer
            reply = client.post("/v1/completions", json={"prompt": "In", "max_tokens": 5, "temperature": 0})
            assert reply.json()["choices"][0]["text"] == generate(run.model, run.tokenizer, "In", max_new_tokens=5, temperature=0)
            assert len(slow_stream) < 5 + 20  # the dropped stream took a few steps of its 200, at most
            assert not scheduler.batch.active and not scheduler.waiting

            slow_stream.clear()
            with client.stream("POST", "/v1/completions", json={"prompt": "In", "max_tokens": 30, "stream": True}) as busy:
                lines = busy.iter_lines()
                next(lines)  # the slot is taken
                post_raw(port, stream).close()  # waits for the slot, then its client is gone
                rest = list(lines)
            assert rest[-2:] == ["data: [DONE]", ""] or rest[-1] == "data: [DONE]"
            client.get("/health")
            deadline = time.monotonic() + 10
            while (scheduler.waiting or scheduler.batch.active) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not scheduler.waiting and not scheduler.batch.active
            assert len(slow_stream) <= 30 + 2  # the waiting stream never decoded (or for a step at most)
    finally:
        live.close()


def test_a_stream_gone_while_its_headers_are_written_frees_its_slot(run, slow_stream):
    """The ASGI app driven directly: the client is gone and writing the response's headers blocks (a full socket
    buffer), so the events' generator never starts; the response's end still takes the sequence out of the batch
    (before: it decoded all its 200 tokens for nobody)."""
    import asyncio

    app = slmkit.serve.create_app(run, ServeConfig(max_batch=1, max_tokens_limit=200))
    scheduler = app.state.server.scheduler
    body = json.dumps({"prompt": "And", "max_tokens": 200, "temperature": 1.0, "stream": True}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/completions", "raw_path": b"/v1/completions",
             "query_string": b"", "root_path": "", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            await asyncio.sleep(0.3)  # the write blocks; meanwhile the disconnect is seen

    asyncio.run(app(scope, receive, send))
    deadline = time.monotonic() + 10
    while (scheduler.batch.active or scheduler.waiting) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not scheduler.batch.active and len(slow_stream) < 200


# ---------------------------------------------------------------- model text that is HTML, in the page


@pytest.fixture
def hostile_model(monkeypatch):
    """Every sequence's text is PAYLOAD, five characters a step, then it stops: a stub behind the real server."""

    def take(self, logits, token=None):
        k = len(self.tokens)
        self.token = 0
        self.tokens.append(0)
        self.window.push(0)
        self.logprob = None
        self.text = PAYLOAD[5 * k : 5 * k + 5]
        if 5 * k + 5 >= len(PAYLOAD):
            self.finish_reason = "stop"

    monkeypatch.setattr(Sequence, "take", take)


def test_the_page_shows_model_html_as_text_and_runs_nothing(run, hostile_model, tmp_path):
    """Behind an API key: the page asks for the key (kept in the page's localStorage), then shows PAYLOAD (from the
    stubbed model, in chat and completion mode, and typed by the user) literally: no element made, no script run."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    live = LiveServer(slmkit.serve.create_app(run, ServeConfig(api_key=KEY)))
    try:
        with chromium_driver(tmp_path) as driver:
            driver.get(live.url + "/")
            wait = WebDriverWait(driver, 30, poll_frequency=0.01)
            status = lambda d: d.find_element(By.ID, "status")  # noqa: E731
            state = lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")  # noqa: E731
            wait.until(lambda d: "no API key" in status(d).text)  # /v1/models refused: the page says so
            driver.find_element(By.ID, "api_key").send_keys(KEY + "\t")  # change: stored, the model loads
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-mode") == "chat")
            assert driver.execute_script("return localStorage.getItem('slmkit-api-key')") == KEY

            driver.find_element(By.ID, "prompt").send_keys(PAYLOAD)  # the user's own message is HTML too
            driver.find_element(By.ID, "generate").click()
            wait.until(lambda d: state(d) in ("done", "error"))
            assert state(driver) == "done", status(driver).text
            contents = [e.get_attribute("textContent") for e in driver.find_elements(By.CSS_SELECTOR, "#messages .content")]
            assert contents == [PAYLOAD, PAYLOAD]
            assert driver.execute_script("return typeof window.pwned") == "undefined"

            driver.refresh()  # the key is remembered
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-mode") == "chat")
            driver.find_element(By.ID, "mode_completion").click()
            driver.find_element(By.ID, "prompt").send_keys(PAYLOAD)
            driver.find_element(By.ID, "generate").click()
            wait.until(lambda d: state(d) in ("done", "error"))
            assert driver.find_element(By.ID, "completion").get_attribute("textContent") == PAYLOAD
            assert driver.find_element(By.CSS_SELECTOR, "#output .prompt").get_attribute("textContent") == PAYLOAD
            time.sleep(0.2)  # an onerror of a broken image would have fired by now
            assert driver.execute_script("return typeof window.pwned") == "undefined"
            assert driver.title == "slmkit"
            for box in ("#output", "#messages"):
                assert driver.find_elements(By.CSS_SELECTOR, f"{box} img, {box} script, {box} b") == []
    finally:
        live.close()
