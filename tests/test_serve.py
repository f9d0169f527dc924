"""`slm serve`: the API (plain and streamed), its limits and errors, the openai client, 50 concurrent
requests, a client that hangs up, the web page in headless Chromium, and the CLI. Loopback only."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402

import slmkit.serve  # noqa: E402
from slmkit.config import ServeConfig, load_recipe  # noqa: E402
from slmkit.errors import SlmError  # noqa: E402
from slmkit.generate import Batch, stream  # noqa: E402
from slmkit.runs import load_run  # noqa: E402
from slmkit.serve import create_app  # noqa: E402
from slmkit.train import train  # noqa: E402

from conftest import TINY_TEXT  # noqa: E402

LIMITS = ServeConfig(max_tokens_limit=64, max_prompt_chars=100)
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained run (2 layers, 32 wide), trained once for this module."""
    root = tmp_path_factory.mktemp("serve")
    (root / "corpus.txt").write_text(TINY_TEXT, encoding="utf-8")
    overrides = {
        "data.source": str(root / "corpus.txt"),
        "data.shard_dir": str(root / "shards"),
        "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 32,
        "train.batch_size": 8, "train.max_steps": 20, "train.max_minutes": 0, "train.warmup_steps": 5,
        "train.eval_interval": 10, "train.eval_batches": 2, "train.log_interval": 5,
        "sample.max_new_tokens": 5,
    }
    train(load_recipe("kjv-char-gpt2", overrides), out=root / "run", progress_bar=False)
    return root / "run"


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir)


@pytest.fixture(scope="module")
def app(run):
    return create_app(run, LIMITS)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


class LiveServer:
    """uvicorn serving `app` in a thread on a free 127.0.0.1 port."""

    def __init__(self, app):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def live(app):
    server = LiveServer(app)
    yield server
    server.close()


def direct(run, prompt, max_tokens, **kwargs):
    """What generate.stream itself gives for these settings: the expected answer."""
    return "".join(stream(run.model, run.tokenizer, prompt=prompt, max_new_tokens=max_tokens, **kwargs))


def sse_events(lines):
    """The `data:` payloads of a server-sent event stream."""
    return [line[len("data: "):] for line in lines if line.startswith("data: ")]


@pytest.fixture
def slow_stream(monkeypatch):
    """Make each batch step take 20 ms and count the tokens it produced."""
    produced = []
    step = Batch.step

    def slow(self):
        time.sleep(0.02)
        stepped = step(self)
        produced.extend(seq.token for seq in stepped)
        return stepped

    monkeypatch.setattr(Batch, "step", slow)
    return produced


def batch_empties(app, timeout=10.0):
    """True once the server's batch holds no sequence (every slot free again)."""
    batch = app.state.server.scheduler.batch
    deadline = time.monotonic() + timeout
    while batch.active and time.monotonic() < deadline:
        time.sleep(0.01)
    return not batch.active


@contextlib.contextmanager
def chromium_driver(tmp_path):
    """Headless Chromium driven through chromedriver (selenium), with a fresh profile; the test is skipped when
    Debian's chromium/chromium-driver or selenium are absent."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium/chromium-driver absent")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def test_health_models_and_page(client, run_dir):
    assert client.get("/health").json() == {"status": "ok", "model": "run"}
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["run"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    for element in ('id="prompt"', 'id="temperature"', 'id="top_k"', 'id="top_p"', 'id="max_tokens"', 'id="stop"'):
        assert element in html
    assert "http://" not in html and "https://" not in html  # no external assets


def test_completion_equals_direct_generation(client, run):
    body = {"model": "run", "prompt": "And God", "max_tokens": 30, "temperature": 0.8, "top_k": 5, "seed": 3}
    reply = client.post("/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    expected = direct(run, "And God", 30, temperature=0.8, top_k=5, seed=3)
    assert out["object"] == "text_completion" and out["model"] == "run"
    assert out["choices"][0]["text"] == expected and len(expected) == 30
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 7, "completion_tokens": 30, "total_tokens": 37}
    # temperature 0 is greedy: no seed needed, same answer every time
    greedy = client.post("/v1/completions", json={"prompt": "And", "max_tokens": 12, "temperature": 0}).json()
    assert greedy["choices"][0]["text"] == direct(run, "And", 12, temperature=0.0)
    # an empty prompt starts a new document; a one-string list is a prompt too
    empty = client.post("/v1/completions", json={"prompt": [""], "max_tokens": 8, "seed": 1}).json()
    assert empty["choices"][0]["text"] == direct(run, "", 8, temperature=1.0, seed=1)


def test_streaming_sends_pieces_then_done(client, run):
    body = {"prompt": "And God", "max_tokens": 25, "temperature": 0.8, "seed": 11, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        events = sse_events(list(reply.iter_lines()))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts = [c["choices"][0]["text"] for c in chunks]
    assert len(chunks) == 26  # one per character, then the finishing chunk
    assert "".join(texts) == direct(run, "And God", 25, temperature=0.8, seed=11)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 25 + ["length"]
    assert chunks[-1]["usage"]["completion_tokens"] == 25
    assert len({c["id"] for c in chunks}) == 1


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        ({"max_tokens": 65}, 422, "serve.max_tokens_limit"),
        ({"max_tokens": -1}, 422, "max_tokens"),
        ({"prompt": "a" * 101}, 422, "serve.max_prompt_chars"),
        ({"prompt": "Hé€"}, 422, "vocabulary"),
        ({"prompt": [[1, 2], [100000]]}, 422, "token ids"),
        ({"temperature": -0.5}, 422, "temperature"),
        ({"temperature": "hot"}, 422, "temperature"),
        ({"top_k": -1}, 422, "top_k"),
        ({"top_p": 0}, 422, "top_p"),
        ({"top_p": 1.5}, 422, "top_p"),
        ({"repetition_penalty": 0}, 422, "repetition_penalty"),
        ({"n": 17}, 422, "n:"),
        ({"n": 9, "prompt": ["a", "b"]}, 422, "choices"),
        ({"logprobs": 6}, 422, "logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
        ({"stop": ""}, 422, "stop"),
        ({"seed": -1}, 422, "seed"),
        ({"model": "gpt-4"}, 404, "serves 'run'"),
        ({"prompt": "a" * 100_000}, 413, "serve.max_prompt_chars"),
    ],
)
def test_bad_requests_get_a_clear_error(client, body, status, words):
    if isinstance(body, bytes):
        reply = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    else:
        reply = client.post("/v1/completions", json=body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert words in error["message"] and "\n" not in error["message"]


def test_top_p_repetition_penalty_and_stop(client, run):
    body = {"prompt": "And God", "max_tokens": 30, "temperature": 0.9, "top_p": 0.5, "seed": 5}
    out = client.post("/v1/completions", json=body).json()["choices"][0]
    assert out["text"] == direct(run, "And God", 30, temperature=0.9, top_p=0.5, seed=5)
    body = {"prompt": "And", "max_tokens": 30, "temperature": 1.0, "seed": 2, "repetition_penalty": 3.0}
    out = client.post("/v1/completions", json=body).json()["choices"][0]
    assert out["text"] == direct(run, "And", 30, temperature=1.0, seed=2, repetition_penalty=3.0)
    assert out["text"] != direct(run, "And", 30, temperature=1.0, seed=2)  # the penalty was applied

    greedy = direct(run, "And", 30, temperature=0.0)
    stop = greedy[10:12]
    cut = greedy[: greedy.index(stop)]
    for stream_it in (False, True):
        body = {"prompt": "And", "max_tokens": 30, "temperature": 0, "stop": [stop], "stream": stream_it}
        if stream_it:
            with client.stream("POST", "/v1/completions", json=body) as reply:
                chunks = [json.loads(e) for e in sse_events(list(reply.iter_lines()))[:-1]]
            text = "".join(c["choices"][0]["text"] for c in chunks)
            finish = chunks[-1]["choices"][0]["finish_reason"]
        else:
            choice = client.post("/v1/completions", json=body).json()["choices"][0]
            text, finish = choice["text"], choice["finish_reason"]
        assert text == cut and finish == "stop"


def test_openai_client(live, run):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["run"]
    out = client.completions.create(model="run", prompt="And God", max_tokens=20, temperature=0.7, seed=9)
    expected = direct(run, "And God", 20, temperature=0.7, seed=9)
    assert out.choices[0].text == expected and out.usage.completion_tokens == 20
    pieces = client.completions.create(model="run", prompt="And God", max_tokens=20, temperature=0.7, seed=9, stream=True)
    assert "".join(chunk.choices[0].text for chunk in pieces) == expected
    with pytest.raises(openai.UnprocessableEntityError, match="serve.max_tokens_limit"):
        client.completions.create(model="run", prompt="x", max_tokens=1000)
    with pytest.raises(openai.NotFoundError, match=r"base \(completion\) models"):
        client.chat.completions.create(model="run", messages=[{"role": "user", "content": "hi"}])


def test_openai_client_concurrent_requests_each_get_their_solo_text(live, run):
    """Different prompts, lengths and options at once through the batch, streamed and not, n > 1."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    asks = [
        dict(prompt="And God said", max_tokens=40, temperature=0.9, seed=1),
        dict(prompt="In", max_tokens=60, temperature=0, repetition_penalty=1.3),  # past block_size 32
        dict(prompt="", max_tokens=12, temperature=1.0, top_k=5, seed=2),
        dict(prompt="And the earth was", max_tokens=30, temperature=1.1, top_p=0.7, seed=3),
        dict(prompt="the", max_tokens=50, temperature=1.0, seed=4, stop=[direct(run, "the", 50, temperature=1.0, seed=4)[20:22], "zz"]),
        dict(prompt="Let there be light", max_tokens=25, temperature=0.8, seed=5, repetition_penalty=1.2, top_k=8),
    ] * 2
    extra = lambda a: {k: a[k] for k in ("top_k", "repetition_penalty") if k in a}  # noqa: E731

    def solo(a, seed_offset=0):
        options = {k: v for k, v in a.items() if k not in ("prompt", "max_tokens")}
        if "seed" in options:
            options["seed"] += seed_offset
        return direct(run, a["prompt"], a["max_tokens"], **options)

    def ask(i):
        a = asks[i]
        common = {k: v for k, v in a.items() if k not in ("top_k", "repetition_penalty")}
        if i % 2:
            chunks = client.completions.create(model="run", stream=True, extra_body=extra(a), **common)
            return ["".join(c.choices[0].text for c in chunks)]
        out = client.completions.create(model="run", n=2 if "seed" in a else 1, extra_body=extra(a), **common)
        return [c.text for c in sorted(out.choices, key=lambda c: c.index)]

    with ThreadPoolExecutor(max_workers=len(asks)) as pool:
        answers = list(pool.map(ask, range(len(asks))))
    for i, (a, answer) in enumerate(zip(asks, answers)):
        assert answer == [solo(a, j) for j in range(len(answer))], i
    assert len(answers[4][0]) <= 20  # the stop string ended it


@pytest.fixture
def small_queue(run, slow_stream):
    """A live server with one slot, two waiting places and a 1.5 s request timeout; its steps take 20 ms."""
    app = create_app(run, ServeConfig(max_batch=1, max_queue=2, request_timeout=1.5, max_tokens_limit=200))
    server = LiveServer(app)
    yield server, app
    server.close()


def test_a_full_queue_answers_503_with_retry_after_and_health_stays_up(small_queue, run):
    live, app = small_queue
    body = {"prompt": "And", "max_tokens": 10, "temperature": 1.0}

    def ask(client, seed):
        return client.post("/v1/completions", json={**body, "seed": seed})

    with httpx.Client(base_url=live.url, timeout=60, limits=httpx.Limits(max_connections=20)) as client:
        with ThreadPoolExecutor(max_workers=10) as pool:
            replies = list(pool.map(lambda s: ask(client, s), range(10)))
            health = client.get("/health")
    assert health.status_code == 200
    ok = [r for r in replies if r.status_code == 200]
    busy = [r for r in replies if r.status_code == 503]
    assert len(ok) + len(busy) == 10 and ok and busy  # one decoding + two waiting; the rest refused
    assert busy[0].headers["retry-after"] == "1"
    error = busy[0].json()["error"]
    assert "serve.max_queue=2" in error["message"] and error["type"] == "server_error"
    for reply in ok:
        seed = json.loads(reply.request.content)["seed"]
        assert reply.json()["choices"][0]["text"] == direct(run, "And", 10, temperature=1.0, seed=seed)

    slow = {**body, "max_tokens": 200}  # 200 steps of 20 ms: past the 1.5 s timeout
    with httpx.Client(base_url=live.url, timeout=60) as client:
        reply = client.post("/v1/completions", json=slow)
        assert reply.status_code == 504 and "serve.request_timeout=1.5" in reply.json()["error"]["message"]
        with client.stream("POST", "/v1/completions", json={**slow, "stream": True}) as streamed:
            events = sse_events(list(streamed.iter_lines()))
        assert "serve.request_timeout" in json.loads(events[-1])["error"]["message"]
    assert batch_empties(app)


def test_logprobs_echo_and_n(client, run):
    from slmkit.generate import prompt_logprobs

    tok = run.tokenizer
    body = {"prompt": "And God said", "max_tokens": 6, "temperature": 0.8, "seed": 3, "logprobs": 2, "echo": True}
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    text = direct(run, "And God said", 6, temperature=0.8, seed=3)
    assert choice["text"] == "And God said" + text
    lp = choice["logprobs"]
    ids = tok.encode("And God said" + text)
    assert lp["tokens"] == [tok.decode([i]) for i in ids] and lp["token_logprobs"][0] is None
    expected = prompt_logprobs(run.model, ids, 2)
    for got, top, (token, want, best) in zip(lp["token_logprobs"][1:], lp["top_logprobs"][1:], expected):
        assert got == pytest.approx(want, abs=1e-5)
        assert list(top) == [tok.decode([t]) for t, _ in best] and max(top.values()) >= got - 1e-6
    assert lp["text_offset"] == list(range(len(ids)))  # one character per token

    scored = client.post("/v1/completions", json={"prompt": "And God", "max_tokens": 0, "echo": True, "logprobs": 0})
    assert scored.json()["choices"][0]["text"] == "And God" and scored.json()["usage"]["completion_tokens"] == 0
    by_ids = client.post("/v1/completions", json={"prompt": [tok.encode("And God")], "max_tokens": 0, "echo": True,
                                                 "logprobs": 0}).json()
    assert by_ids["choices"][0]["logprobs"]["token_logprobs"] == scored.json()["choices"][0]["logprobs"]["token_logprobs"]
    plain = client.post("/v1/completions", json={"prompt": "And", "max_tokens": 5, "logprobs": None}).json()
    assert plain["choices"][0]["logprobs"] is None

    many = client.post("/v1/completions", json={"prompt": ["And", "In the"], "n": 3, "max_tokens": 8, "seed": 4}).json()
    texts = [c["text"] for c in sorted(many["choices"], key=lambda c: c["index"])]
    assert texts == [direct(run, p, 8, temperature=1.0, seed=4 + j) for p in ("And", "In the") for j in range(3)]
    assert many["usage"]["completion_tokens"] == 48 and many["usage"]["prompt_tokens"] == 3 + 6


def test_unknown_paths_and_chat_get_an_openai_shaped_error(client):
    for method, path in [("POST", "/v1/chat/completions"), ("GET", "/v1/nothing"), ("POST", "/v1/embeddings")]:
        reply = client.request(method, path, json={})
        assert reply.status_code == 404
        error = reply.json()["error"]
        assert "base (completion) models" in error["message"] and error["type"] == "not_found_error"
    assert client.get("/v1/completions").status_code == 405
    assert "POST /v1/completions" in client.get("/v1/completions").json()["error"]["message"]
    assert client.post("/tokenize", json={"prompt": "And"}).json()["tokens"] == client.app.state.server.run.tokenizer.encode("And")
    assert client.post("/detokenize", json={"tokens": [1, 2]}).json()["prompt"] == client.app.state.server.run.tokenizer.decode([1, 2])


def test_fifty_concurrent_requests_each_get_their_own_answer(live, run):
    """Concurrency correctness: every request's text equals the one generated alone with its seed."""
    seeds = list(range(50))
    expected = {s: direct(run, "And", 10, temperature=1.0, seed=s) for s in seeds}
    assert len(set(expected.values())) > 40  # the seeds really give different texts

    def ask(client, seed):
        body = {"prompt": "And", "max_tokens": 10, "temperature": 1.0, "seed": seed, "stream": seed % 2 == 0}
        if body["stream"]:
            with client.stream("POST", "/v1/completions", json=body) as reply:
                assert reply.status_code == 200
                events = sse_events(list(reply.iter_lines()))
            assert events[-1] == "[DONE]"
            return "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
        reply = client.post("/v1/completions", json=body)
        assert reply.status_code == 200
        return reply.json()["choices"][0]["text"]

    limits = httpx.Limits(max_connections=50)
    with httpx.Client(base_url=live.url, timeout=120, limits=limits) as client:
        with ThreadPoolExecutor(max_workers=50) as pool:
            answers = list(pool.map(lambda s: ask(client, s), seeds))
    assert answers == [expected[s] for s in seeds]


def test_a_request_not_streamed_gets_its_updates_at_once_when_it_ends(run, slow_stream):
    """The scheduler wakes a streamed request at every step, one that is not streamed only when its sequence has
    ended: its 16 updates arrive in one hand-over (the rest are queued when the first is read), with its solo text."""
    import asyncio

    from slmkit.sampling import SamplingParams
    from slmkit.serve import Scheduler, Ticket

    async def main():
        async with asyncio.timeout(60):  # a lost update fails the test instead of hanging it
            scheduler = Scheduler(run, ServeConfig(max_batch=4))
            loop, ids = asyncio.get_running_loop(), run.tokenizer.encode("And")
            tickets = [Ticket(0, ids, SamplingParams(max_new_tokens=n, temperature=1.0, seed=n), None, asyncio.Queue(), loop,
                              float("inf"), streamed) for n, streamed in ((8, True), (16, False))]
            scheduler.submit(tickets)
            waiting = []  # what the plain request has been handed whenever the streamed one gets an update
            for _ in range(8):
                await tickets[0].queue.get()
                waiting.append(tickets[1].queue.qsize())
            first = await tickets[1].queue.get()
            rest = [tickets[1].queue.get_nowait() for _ in range(tickets[1].queue.qsize())]
            scheduler.close()
            return waiting, first, rest

    waiting, first, rest = asyncio.run(main())
    assert set(waiting) <= {0, 16} and 0 in waiting  # steps take 20 ms: the streamed request is read as it goes
    assert len(rest) == 15 and rest[-1].finish_reason == "length" and rest[-1].tokens == 16
    assert first.text + "".join(u.text for u in rest) == direct(run, "And", 16, temperature=1.0, seed=16)


def test_client_disconnect_stops_generation(live, app, slow_stream):
    body = {"prompt": "And", "max_tokens": 64, "temperature": 1.0, "stream": True}
    with httpx.Client(base_url=live.url, timeout=30) as client:
        with client.stream("POST", "/v1/completions", json=body) as reply:
            for n, _ in enumerate(reply.iter_lines()):
                if n >= 4:
                    break  # hang up after two pieces
    assert batch_empties(app)  # the sequence left the batch
    assert 2 <= len(slow_stream) < 20  # well short of 64 pieces at 20 ms each

    slow_stream.clear()  # the same for a plain (not streamed) request whose client gives up
    with httpx.Client(base_url=live.url, timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/completions", json={**body, "stream": False})
    assert batch_empties(app)
    assert 1 <= len(slow_stream) < 40
    with httpx.Client(base_url=live.url, timeout=30) as client:  # and the server goes on serving
        assert client.post("/v1/completions", json={"max_tokens": 3}).status_code == 200


def test_missing_fastapi_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "slmkit.serve")
    with pytest.raises(SlmError, match=r"pip install 'slmkit\[serve\]'"):
        import slmkit.serve  # noqa: F401


def test_page_in_headless_chromium(live, run, slow_stream, tmp_path):
    """Type a prompt, see text stream in while it is generating, stop it; then a full run with a seed."""
    with chromium_driver(tmp_path) as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(live.url + "/")
        wait = WebDriverWait(driver, 30, poll_frequency=0.01)
        wait.until(lambda d: d.find_element(By.ID, "model").text == "run")
        state = lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")  # noqa: E731

        def fill(field, value):
            element = driver.find_element(By.ID, field)
            element.clear()
            element.send_keys(value)

        fill("prompt", "And God")
        fill("max_tokens", "64")
        driver.find_element(By.ID, "generate").click()
        # streamed: text is on the page while the generation is still going (64 pieces take >= 1.3 s)
        wait.until(lambda d: state(d) == "generating" and len(d.find_element(By.ID, "completion").text) >= 3)
        driver.find_element(By.ID, "stop").click()
        wait.until(lambda d: state(d) == "stopped")
        assert len(driver.find_element(By.ID, "completion").text) < 64

        fill("max_tokens", "30")
        fill("seed", "4")
        fill("temperature", "0.8")
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: state(d) in ("done", "error"))
        text = driver.find_element(By.ID, "completion").get_attribute("textContent")
        assert text == direct(run, "And God", 30, temperature=0.8, seed=4)
        assert driver.find_element(By.ID, "prompt").get_attribute("value") == "And God"


def test_cli_serves_and_checks_its_options(run_dir, tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "slmkit", "serve", "--run", str(run_dir)]
    bad = subprocess.run(cmd + ["--train.lr=1"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and "serve.* overrides only" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run(cmd + ["--serve.max_tokens_limit=0"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and "serve.max_tokens_limit=0" in bad.stderr

    with socket.create_server(("127.0.0.1", 0)) as taken:  # a port in use is a one-line error
        busy = subprocess.run(cmd + ["--port", str(taken.getsockname()[1])], capture_output=True, text=True, env=env)
    assert busy.returncode == 1 and "pick another --port" in busy.stderr and "Traceback" not in busy.stderr

    proc = subprocess.Popen(
        cmd + ["--port", "0", "--serve.max_tokens_limit=8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env,
    )
    try:
        first = proc.stdout.readline()  # "serving DIR as 'run' on http://127.0.0.1:PORT/ ..."
        assert " on http://127.0.0.1:" in first, proc.stderr.read() if proc.poll() is not None else first
        url = first.split(" on ")[1].split("/  ")[0].rstrip("/")
        assert httpx.get(url + "/health").json() == {"status": "ok", "model": "run"}
        assert httpx.post(url + "/v1/completions", json={"max_tokens": 8}).status_code == 200
        assert httpx.post(url + "/v1/completions", json={"max_tokens": 9}).status_code == 422
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl+C
        _, err = proc.communicate(timeout=20)
    assert proc.returncode in (0, 130) and "Traceback" not in err, err


def test_lm_eval_local_completions_scores_like_slm_eval(run, run_dir, tmp_path):
    """lm-evaluation-harness's local-completions model against a live server (its remote tokenizer: our
    /tokenize) on a local rolling-log-likelihood task: the same bits per byte as `slm eval` on the text."""
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from slmkit.evaluate import evaluate_run

    doc = "And God said, Let there be light: and there was light. And the earth was without form, and void;"
    (tmp_path / "doc.txt").write_text(doc, encoding="utf-8")
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": doc}) + "\n", encoding="utf-8")
    (tmp_path / "slm_local.yaml").write_text(
        "task: slm_local\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'docs.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: bits_per_byte\n  - metric: byte_perplexity\n",
        encoding="utf-8",
    )
    server = LiveServer(create_app(run, ServeConfig(max_prompt_chars=1000)))
    try:
        results = simple_evaluate(
            model="local-completions",
            model_args={"base_url": f"{server.url}/v1/completions", "model": "run", "tokenizer_backend": "remote",
                        "num_concurrent": 2, "max_retries": 1, "tokenized_requests": True},
            tasks=["slm_local"], task_manager=TaskManager(include_path=str(tmp_path)), log_samples=False,
        )
    finally:
        server.close()
    ours = evaluate_run(run_dir, source=str(tmp_path / "doc.txt"))
    assert ours.tokens == len(doc) > run.model.config.block_size  # several windows, as slm eval reads them
    theirs = results["results"]["slm_local"]["bits_per_byte,none"]
    assert theirs == pytest.approx(ours.metrics["bits_per_byte"], rel=1e-5)


@pytest.mark.parametrize("key, value", [("max_batch", 0), ("max_queue", -1), ("request_timeout", -1.0), ("threads", -2)])
def test_scheduler_options_are_checked(key, value):
    with pytest.raises(SlmError, match=f"serve.{key}="):
        ServeConfig(**{key: value}).validate()
