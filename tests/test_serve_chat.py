"""`slm serve` on a chat run: POST /v1/chat/completions through the run's chat template, checked with the
official openai client (streamed and not, concurrent requests each equal to its solo reply), and the page's
chat mode in headless Chromium."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
from fastapi.testclient import TestClient  # noqa: E402

from slmkit.chat import SPECIAL_TOKENS, arithmetic_reversal_set  # noqa: E402
from slmkit.config import ServeConfig, load_recipe  # noqa: E402
from slmkit.generate import generate  # noqa: E402
from slmkit.runs import load_run  # noqa: E402
from slmkit.serve import create_app  # noqa: E402
from slmkit.tokenizer.chat import chat_prompt  # noqa: E402
from slmkit.train import train  # noqa: E402

from test_serve import LiveServer, chromium_driver, sse_events  # noqa: E402

QUESTION = [{"role": "user", "content": "What is 2 plus 3?"}]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """A tiny chat run (2 layers, 32 wide) trained for 100 steps on generated questions: it answers and
    then writes its END marker (a few seconds)."""
    root = tmp_path_factory.mktemp("serve_chat")
    with open(root / "chat.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in arithmetic_reversal_set(600, seed=0))
    overrides = {
        "data.source": str(root / "chat.jsonl"), "data.shard_dir": str(root / "shards"), "data.num_workers": 1,
        "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 48,
        "train.batch_size": 16, "train.max_steps": 100, "train.warmup_steps": 10, "train.lr": 1e-2,
        "train.eval_interval": 100, "train.eval_batches": 2, "train.log_interval": 50,
    }
    train(load_recipe("chat-arithmetic", overrides), out=root / "run", progress_bar=False)
    return root / "run"


@pytest.fixture(scope="module")
def chat_run(chat_dir):
    return load_run(chat_dir)


@pytest.fixture(scope="module")
def app(chat_run):
    return create_app(chat_run, ServeConfig(max_tokens_limit=64, max_prompt_chars=200))


@pytest.fixture(scope="module")
def live(app):
    server = LiveServer(app)
    yield server
    server.close()


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)


def solo(run, messages, max_tokens=64, **options):
    """The reply generate(messages=) gives alone: what the server must answer."""
    return generate(run.model, run.tokenizer, messages=messages, max_new_tokens=max_tokens, **options)


def test_chat_completion_renders_the_template_and_stops_at_the_end_marker(client, chat_run):
    out = client.chat.completions.create(model="run", messages=QUESTION, temperature=0)
    expected = solo(chat_run, QUESTION, temperature=0.0)
    assert out.object == "chat.completion" and out.model == "run" and out.id.startswith("chatcmpl-")
    choice = out.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert choice.finish_reason == "stop" and 0 < len(expected) < 10  # the model wrote its END marker
    assert not any(marker in expected for marker in SPECIAL_TOKENS)
    prompt_tokens = len(chat_prompt(chat_run.tokenizer, QUESTION))
    # the reply's characters and its END marker
    assert out.usage.prompt_tokens == prompt_tokens and out.usage.completion_tokens == len(expected) + 1
    # max_tokens cuts it short: finish "length"
    short = client.chat.completions.create(model="run", messages=QUESTION, temperature=0, max_tokens=1)
    assert short.choices[0].message.content == expected[:1] and short.choices[0].finish_reason == "length"


def test_streamed_chat_sends_the_role_then_the_text_then_the_finish(client, chat_run, live):
    messages = [{"role": "system", "content": "be short"}, {"role": "user", "content": "Reverse: abcd"}]
    expected = solo(chat_run, messages, temperature=0.9, seed=7)
    chunks = list(client.chat.completions.create(model="run", messages=messages, temperature=0.9, seed=7,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= len(expected)
    assert len({c.id for c in chunks}) == 1
    import httpx  # the raw stream ends with [DONE]

    body = {"messages": messages, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{live.url}/v1/chat/completions", json=body) as reply:
        assert sse_events(list(reply.iter_lines()))[-1] == "[DONE]"


def test_concurrent_chat_requests_each_get_their_solo_reply(client, chat_run):
    """Different conversations, options, n and stop strings at once through the batch, streamed and not."""
    asks = [
        dict(messages=QUESTION, temperature=0),
        dict(messages=[{"role": "user", "content": "Reverse: xyz"}], temperature=1.0, seed=1, n=2),
        dict(messages=[{"role": "user", "content": "What is 40 plus 9?"}], temperature=0.8, top_p=0.8, seed=2),
        dict(messages=[{"role": "system", "content": "add"}, {"role": "user", "content": "What is 7 plus 7?"},
                       {"role": "assistant", "content": "14"}, {"role": "user", "content": "Reverse: hello"}],
             temperature=1.2, seed=3, max_tokens=6),
        dict(messages=[{"role": "user", "content": "hello there"}], temperature=1.0, seed=4, stop=["1", "e"]),
    ] * 2

    def ask(i):
        a = dict(asks[i])
        if i % 2:
            chunks = client.chat.completions.create(model="run", stream=True, **a)
            texts = {}
            for c in chunks:
                for choice in c.choices:
                    texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            return [texts[k] for k in sorted(texts)]
        out = client.chat.completions.create(model="run", **a)
        return [c.message.content for c in sorted(out.choices, key=lambda c: c.index)]

    def expected(a):
        options = {k: v for k, v in a.items() if k not in ("messages", "n", "max_tokens")}
        seeds = [options.pop("seed", None)]
        seeds += [seeds[0] + j for j in range(1, a.get("n", 1))]
        return [solo(chat_run, a["messages"], a.get("max_tokens", 64), **options, seed=s) for s in seeds]

    with ThreadPoolExecutor(max_workers=len(asks)) as pool:
        answers = list(pool.map(ask, range(len(asks))))
    for i, (a, answer) in enumerate(zip(asks, answers)):
        assert answer == expected(a), i
    assert answers[1][0] != answers[1][1]  # n=2: two seeds, two replies


@pytest.mark.parametrize(
    "body, status, param, words",
    [
        ({"messages": []}, 422, "messages", "non-empty list"),
        ({"messages": [{"role": "bot", "content": "x"}]}, 422, "messages", "role 'bot'"),
        ({"messages": [{"role": "user", "content": 5}]}, 422, "messages", "no string 'content'"),
        ({"messages": [{"role": "user", "content": "€"}]}, 422, "messages", "vocabulary"),
        ({"messages": [{"role": "user", "content": "a" * 300}]}, 422, "messages", "serve.max_prompt_chars"),
        ({"messages": "hi"}, 422, "messages", "valid list"),
        ({}, 422, "messages", "messages: Field required"),
        ({"messages": QUESTION, "max_tokens": 65}, 422, "max_tokens", "serve.max_tokens_limit"),
        ({"messages": QUESTION, "max_completion_tokens": 99}, 422, "max_completion_tokens", "serve.max_tokens_limit"),
        ({"messages": QUESTION, "temperature": -1}, 422, "temperature", "temperature"),
        ({"messages": QUESTION, "logprobs": True}, 422, "logprobs", "not served for chat"),
        ({"messages": QUESTION, "model": "gpt-4"}, 404, "model", "serves 'run'"),
    ],
)
def test_bad_chat_requests_name_the_field(app, body, status, param, words):
    with TestClient(app) as http:
        reply = http.post("/v1/chat/completions", json=body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and words in error["message"] and "\n" not in error["message"]


def test_models_say_chat_and_unknown_paths_point_to_chat(app):
    with TestClient(app) as http:
        assert http.get("/v1/models").json()["data"][0]["chat"] is True
        error = http.post("/v1/embeddings", json={}).json()["error"]
    assert "/v1/chat/completions" in error["message"]


def test_page_chat_mode_in_headless_chromium(live, chat_run, tmp_path):
    """On a chat run the page opens in chat mode: each sent message and its streamed reply join the list with
    their roles, and the next turn sends the whole conversation."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium_driver(tmp_path) as driver:
        driver.get(live.url + "/")
        wait = WebDriverWait(driver, 30, poll_frequency=0.01)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-mode") == "chat")
        assert driver.find_element(By.ID, "mode_chat").is_selected()
        state = lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")  # noqa: E731
        for field, value in (("temperature", "0"), ("max_tokens", "20")):
            driver.find_element(By.ID, field).clear()
            driver.find_element(By.ID, field).send_keys(value)
        history = []
        for question in ("What is 2 plus 3?", "Reverse: abc"):
            driver.find_element(By.ID, "prompt").send_keys(question)
            driver.find_element(By.ID, "generate").click()
            wait.until(lambda d: state(d) in ("done", "error"))
            history.append({"role": "user", "content": question})
            reply = driver.find_element(By.ID, "reply").get_attribute("textContent")
            assert reply == solo(chat_run, history, 20, temperature=0.0), driver.find_element(By.ID, "status").text
            history.append({"role": "assistant", "content": reply})
        roles = [e.get_attribute("textContent") for e in driver.find_elements(By.CSS_SELECTOR, "#messages .role")]
        assert roles == ["user", "assistant", "user", "assistant"]
        driver.find_element(By.ID, "mode_completion").click()  # completion mode on the same run
        assert driver.find_element(By.ID, "output").is_displayed()
        assert not driver.find_element(By.ID, "messages").is_displayed()
