import math

import pytest
import torch

from slmkit.config import POS_EMBEDDINGS, ConfigError
from slmkit.generate import (
    PieceDecoder, StopMatcher, TokenSampler, choose_tokens, decode_pieces, generate, next_logits, process_logits, sample_ids, stream, until_stop,
)
from slmkit.sampling import SamplingParams
from slmkit.model import GPT, GPTConfig
from slmkit.tokenizer import CharTokenizer, GPT2Tokenizer

BLOCK = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine the thread handoffs cost seconds per test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=50)
    cfg.update(kw)
    model = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():  # larger weights than GPT-2's init, so greedy decoding does not repeat one token
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("pos_embedding", POS_EMBEDDINGS)
@pytest.mark.parametrize("prompt_len", [5, 23])  # 23 > block_size: the prompt is cropped first
def test_cache_gives_the_uncached_logits_and_ids_past_the_block_size(pos_embedding, prompt_len):
    model = tiny_model(pos_embedding=pos_embedding)
    prompt = torch.randint(0, 50, (prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    forced = torch.randint(0, 50, (3 * BLOCK,), generator=torch.Generator().manual_seed(2)).tolist()
    cached, uncached = next_logits(model, prompt, True), next_logits(model, prompt, False)
    a, b = next(cached), next(uncached)
    for token in forced:  # 3 blocks of new tokens: the window slides several times
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        a, b = cached.send(token), uncached.send(token)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)

    for penalty in (1.0, 2.0):  # the penalty keeps greedy decoding of random weights from repeating one token
        greedy = list(sample_ids(model, prompt, max_new_tokens=3 * BLOCK, temperature=0, repetition_penalty=penalty))
        greedy_params = SamplingParams(max_new_tokens=3 * BLOCK, temperature=0, repetition_penalty=penalty)
        assert greedy == list(sample_ids(model, prompt, greedy_params, use_cache=False))
    assert len(set(greedy)) > 5


def test_cache_reads_the_prompt_once_then_one_token_per_step(monkeypatch):
    model = tiny_model()
    lengths = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda idx, *a, **k: lengths.append(idx.shape[1]) or forward(idx, *a, **k))
    list(sample_ids(model, [1, 2, 3, 4, 5], max_new_tokens=30, temperature=0))
    # 5 prompt tokens, then one per step until the window (16) is full; then it slides to its last 8
    assert lengths[:12] == [5] + [1] * 11
    assert lengths[12] == BLOCK // 2 and lengths[13:21] == [1] * 8 and lengths[21] == BLOCK // 2
    assert len(lengths) == 30
    lengths.clear()
    list(sample_ids(model, [1, 2, 3, 4, 5], max_new_tokens=30, temperature=0, use_cache=False))
    assert lengths[:3] == [5, 6, 7] and max(lengths) == BLOCK


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([1.0, 4.0, 3.0, 2.0])
    out = process_logits(logits, SamplingParams(temperature=1.0, top_k=2))
    assert torch.isinf(out[[0, 3]]).all() and torch.equal(out[[1, 2]], logits[[1, 2]])


def test_top_p_keeps_the_smallest_set_holding_p():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log()

    def kept(top_p):
        return torch.isfinite(process_logits(logits, SamplingParams(temperature=1.0, top_p=top_p))).tolist()

    assert kept(0.9) == [False, True, True, True]  # 0.5 + 0.3 < 0.9, so 0.15 is needed too
    assert kept(0.5) == [False, True, False, False]
    assert sum(kept(0.01)) == 1  # the top token always stays


def test_repetition_penalty_and_temperature():
    logits = torch.tensor([2.0, -1.0, 1.0])
    seen = torch.tensor([True, True, False])
    out = process_logits(logits, SamplingParams(temperature=1.0, repetition_penalty=2.0), seen)
    assert out.tolist() == [1.0, -2.0, 1.0]  # positive divided, negative multiplied, unseen untouched
    assert process_logits(logits, SamplingParams(temperature=0.5)).tolist() == [4.0, -2.0, 2.0]


def test_repetition_penalty_changes_greedy_choice():
    model = tiny_model()
    plain = list(sample_ids(model, [1, 2, 3], max_new_tokens=20, temperature=0))
    penalized = list(sample_ids(model, [1, 2, 3], max_new_tokens=20, temperature=0, repetition_penalty=100.0))
    assert plain != penalized
    assert len(set(penalized)) == 20 and not set(penalized) & {1, 2, 3}  # with a huge penalty no token repeats


def test_stop_strings_end_the_output_and_are_never_emitted():
    assert list(until_stop(["Hel", "lo Wo", "rld"], ["o W"])) == ["Hel", "l"]
    pieces = list(until_stop(["x", "S", "TO", "P", "y"], ["STOP"]))
    assert pieces == ["x"]  # "S", "STO" were held back as possible starts of the stop string
    assert "".join(until_stop(["ab", "c"], ["cd"])) == "abc"  # a held prefix that never completes comes out
    assert "".join(until_stop(["a\n", "\nb"], ["\n\n", "zz"])) == "a"
    assert list(until_stop(["abc"], None)) == ["abc"]


def test_stop_string_in_generation():
    tok = CharTokenizer.fit(["abcdefgh \n"])
    model = tiny_model(vocab_size=tok.vocab_size)
    full = "".join(stream(model, tok, "a", max_new_tokens=60, temperature=1.0, seed=3))
    stop = full[20:22]
    cut = "".join(stream(model, tok, "a", max_new_tokens=60, temperature=1.0, seed=3, stop=[stop]))
    assert cut == full[: full.index(stop)]


def test_multibyte_characters_come_out_whole_with_gpt2_pieces():
    tok = GPT2Tokenizer()
    text = "Fox 🦊 and 日本 ok é"
    ids = tok.encode(text)
    assert any(tok.decode([i]) == "\ufffd" for i in ids)  # the emoji is split across byte tokens
    pieces = list(decode_pieces(tok, ids))
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert "🦊" in pieces[1] or "🦊" in pieces  # the emoji arrives in one piece
    context = tok.encode("The")
    assert "".join(decode_pieces(tok, tok.encode(" quick 🦊"), context)) == " quick 🦊"


def test_invalid_bytes_are_not_held_forever():
    tok = GPT2Tokenizer()
    lone = tok.encode("🦊")[1]  # a continuation byte on its own
    pieces = list(decode_pieces(tok, [lone] * 6 + tok.encode("ok")))
    assert "".join(pieces).endswith("ok") and len(pieces) >= 2


def test_a_fixed_seed_gives_the_same_text_cached_or_not():
    tok = CharTokenizer.fit(["abcdefgh \n"])
    model = tiny_model(vocab_size=tok.vocab_size)
    kw = dict(max_new_tokens=40, temperature=1.0, top_k=5, top_p=0.9, seed=11)
    a = generate(model, tok, "abc", **kw)
    assert a == generate(model, tok, "abc", **kw) == generate(model, tok, "abc", use_cache=False, **kw)
    assert len(a) == 40
    assert a != generate(model, tok, "abc", **dict(kw, seed=12))
    samples = generate(model, tok, "abc", num_samples=3, **kw)
    assert isinstance(samples, list) and len(samples) == 3 and samples[0] == a and len(set(samples)) == 3


def test_bad_sampling_arguments_fail_at_the_call():
    tok = CharTokenizer.fit(["ab"])
    model = tiny_model(vocab_size=tok.vocab_size)
    with pytest.raises(ConfigError, match="top_p"):
        stream(model, tok, "a", top_p=0.0)
    with pytest.raises(ConfigError, match="repetition_penalty"):
        stream(model, tok, "a", repetition_penalty=0.0)
    assert math.isclose(len(generate(model, tok, "", max_new_tokens=5, temperature=0)), 5)


def test_multibyte_characters_come_out_whole_with_byte_level_bpe():
    from slmkit.config import TokenizerConfig
    from slmkit.tokenizer import fit_tokenizer

    tok = fit_tokenizer(TokenizerConfig(kind="bpe", vocab_size=270), ["hello world"] * 20)  # bytes + a few merges
    ids = tok.encode("hi 🦊 日本")
    assert len(ids) == 14  # every byte of the emoji and the two CJK characters is its own token
    assert list(decode_pieces(tok, ids, tok.encode("hello"))) == ["h", "i", " ", "🦊", " ", "日", "本"]


@pytest.mark.parametrize("kind", ["bpe", "word", "gpt2"])
def test_end_of_text_reads_as_a_newline_between_documents(kind):
    from slmkit.config import TokenizerConfig
    from slmkit.tokenizer import fit_tokenizer

    docs = ["In the beginning God created", "And the earth was without form"] * 10
    tok = GPT2Tokenizer() if kind == "gpt2" else fit_tokenizer(TokenizerConfig(kind=kind, vocab_size=300), docs)
    ids = tok.encode(docs[0]) + [tok.eot_id] + tok.encode(docs[1]) + [tok.eot_id]
    assert "<|endoftext|>" in tok.decode(ids)  # the tokenizer itself keeps the special token
    assert "".join(decode_pieces(tok, ids, [tok.eot_id])) == docs[0] + "\n" + docs[1] + "\n"


def test_generation_puts_the_model_back_in_training_mode():
    model = tiny_model(dropout=0.1).train()
    tokens = sample_ids(model, [1, 2], max_new_tokens=10, temperature=0)
    next(tokens)
    assert not model.training  # no dropout while sampling
    tokens.close()  # stopped early (a stop string, a closed connection)
    assert model.training
    list(sample_ids(model, [1], max_new_tokens=3))
    assert model.training


def test_sampling_params_validate_in_one_place_and_name_the_option():
    assert SamplingParams().validate() == SamplingParams()
    for bad, field in [
        (dict(max_new_tokens=-1), "max_new_tokens"), (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"), (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(repetition_penalty=float("inf")), "repetition_penalty"), (dict(stop=["ok", ""]), "stop"),
        (dict(seed=-1), "seed"), (dict(seed=2**63), "seed"), (dict(top_k=2.5), "top_k"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=f"^sample.{field}=") as caught:
            SamplingParams(**bad).validate(prefix="sample.")
        assert caught.value.field == field
    assert SamplingParams(stop="\n").stop == ("\n",) and SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    with pytest.raises(TypeError, match="temprature"):
        SamplingParams().replace(temprature=1.0)
    assert SamplingParams(seed=5).nth(0).seed == 5 and SamplingParams(seed=5).nth(2).seed == 7
    assert SamplingParams().nth(3).seed is None


def test_recipe_sample_section_gives_its_sampling_params():
    from slmkit.config import SampleConfig

    sc = SampleConfig(prompt="x", max_new_tokens=7, temperature=0.5, top_k=3, seed=9, top_p=0.8, repetition_penalty=1.3)
    assert sc.params() == SamplingParams(
        max_new_tokens=7, temperature=0.5, top_k=3, top_p=0.8, repetition_penalty=1.3, seed=9
    )
    with pytest.raises(ConfigError, match="sample.top_p=0.0"):
        SampleConfig(top_p=0.0).validate()


def test_params_object_and_keyword_options_give_the_same_text():
    tok = CharTokenizer.fit(["abcdefgh \n"])
    model = tiny_model(vocab_size=tok.vocab_size)
    params = SamplingParams(max_new_tokens=30, temperature=1.0, top_k=4, repetition_penalty=1.5, seed=4)
    text = generate(model, tok, "ab", params)
    same = dict(max_new_tokens=30, temperature=1.0, top_k=4, repetition_penalty=1.5, seed=4)
    assert text == generate(model, tok, "ab", **same)
    assert text == "".join(stream(model, tok, "ab", params))
    greedy = generate(model, tok, "ab", params.replace(temperature=0))
    assert generate(model, tok, "ab", params, temperature=0) == greedy


def test_per_sequence_state_is_independent():
    """Two sequences' samplers and stop matchers, stepped in turn, give what each gives alone (issue 15's batches)."""
    model = tiny_model()
    params = [SamplingParams(temperature=1.0, seed=s, repetition_penalty=1.2) for s in (1, 2)]
    alone = [list(sample_ids(model, [1, 2], p, max_new_tokens=12)) for p in params]
    samplers = [TokenSampler(p, 50, [1, 2], model.device) for p in params]
    steps = [next_logits(model, [1, 2]) for _ in params]
    logits = [next(s) for s in steps]
    together: list[list[int]] = [[], []]
    for _ in range(12):
        for i in (0, 1):
            token = samplers[i].choose(logits[i])
            together[i].append(token)
            logits[i] = steps[i].send(token) if len(together[i]) < 12 else None
    assert together == alone and alone[0] != alone[1]

    a, b = StopMatcher(["STOP"]), StopMatcher(["\n\n"])
    assert [a.push("xS"), b.push("y\n"), a.push("TOP z"), b.push("w"), b.push("\n\nq")] == ["x", "y", "", "\nw", ""]
    assert a.stopped and b.stopped and a.push("more") == ""

    tok = GPT2Tokenizer()  # two texts whose characters span several byte tokens, decoded in turn
    texts = [tok.encode("Fox 🦊 and 日本"), tok.encode("é 🦊🦊 ok")]
    decoders = [PieceDecoder(tok), PieceDecoder(tok)]
    pieces: list[list[str]] = [[], []]
    for step in range(max(map(len, texts))):
        for i in (0, 1):
            if step < len(texts[i]) and (piece := decoders[i].push(texts[i][step])):
                pieces[i].append(piece)
    assert pieces == [list(decode_pieces(tok, ids)) for ids in texts]
    assert ["".join(p) for p in pieces] == ["Fox 🦊 and 日本", "é 🦊🦊 ok"]


def test_the_exponential_race_draws_what_multinomial_draws():
    """choose_tokens samples as torch.multinomial(probs, 1, generator) does: the same token every draw and the
    generator left in the same state (also torch's global RNG for seed=None), so batched texts are the old texts."""
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * torch.tensor([[0.1], [1.0], [3.0], [8.0], [1.0], [1.0]])
    logits[4, 10:] = float("-inf")  # excluded tokens: probability 0
    logits[5, :] = 0.0  # a uniform row
    for seed in range(20):
        sampler = TokenSampler(SamplingParams(temperature=1.0, seed=seed), 50, [1], torch.device("cpu"))
        reference = torch.Generator().manual_seed(seed)
        for row in logits:
            assert sampler.choose(row) == int(torch.multinomial(torch.softmax(row, -1), 1, generator=reference))
        assert torch.equal(sampler.generator.get_state(), reference.get_state())
    big = [TokenSampler(SamplingParams(temperature=1.0, seed=s), 50257, [1], torch.device("cpu")) for s in (1, 2)]
    references = [torch.Generator().manual_seed(s) for s in (1, 2)]  # GPT-2's vocabulary, two rows in one race
    for _ in range(3):
        rows = torch.randn(2, 50257) * 2
        expected = [int(torch.multinomial(torch.softmax(r, -1), 1, generator=g)) for r, g in zip(rows, references)]
        assert choose_tokens(big, rows) == expected
    unseeded = TokenSampler(SamplingParams(temperature=1.0), 50, [1], torch.device("cpu"))
    torch.manual_seed(5)
    ours = [unseeded.choose(row) for row in logits]
    torch.manual_seed(5)
    assert ours == [int(torch.multinomial(torch.softmax(row, -1), 1)) for row in logits]


def test_rows_sharing_options_are_processed_together_with_the_values_of_each_alone():
    """The vectorised path: process_logits over (B, vocab) gives each row exactly its (vocab,) values, and
    choose_tokens on a batch mixing options (greedy, top-k/p, penalties, seeds) gives each sampler's own token."""
    torch.manual_seed(1)
    logits = torch.randn(5, 50) * 3
    seen = torch.rand(5, 50) < 0.3
    for params in [SamplingParams(temperature=0.7, top_k=7), SamplingParams(temperature=1.3, top_p=0.6),
                   SamplingParams(temperature=0, repetition_penalty=1.4), SamplingParams(temperature=0.9, top_k=20,
                   top_p=0.9, repetition_penalty=1.2)]:
        together = process_logits(logits, params, seen)
        for i in range(5):
            assert torch.equal(together[i], process_logits(logits[i], params, seen[i]))
    options = [dict(temperature=0.8), dict(temperature=0.8), dict(temperature=0), dict(temperature=1.0, top_k=3),
               dict(temperature=0.8, repetition_penalty=1.3), dict(temperature=0, repetition_penalty=1.3), dict(temperature=0.8)]
    params = [SamplingParams(seed=i, **o) for i, o in enumerate(options)]
    context = [1, 2, 3]
    alone = [TokenSampler(p, 50, context, torch.device("cpu")) for p in params]
    batched = [TokenSampler(p, 50, context, torch.device("cpu")) for p in params]
    for _ in range(30):
        step = torch.randn(len(params), 50) * 2
        expected = [sampler.choose(row) for sampler, row in zip(alone, step)]
        assert choose_tokens(batched, step) == expected
    for a, b in zip(alone, batched):
        assert a.seen is None and b.seen is None or torch.equal(a.seen, b.seen)
        assert a.generator is None or torch.equal(a.generator.get_state(), b.generator.get_state())


def test_a_positional_token_count_is_refused_with_the_keyword_to_use():
    with pytest.raises(TypeError, match="max_new_tokens=N by keyword"):
        list(sample_ids(tiny_model(), [1], 12))


def _recording(monkeypatch) -> list:
    """Keep every Sequence made, each with the logits it took (`seen`)."""
    from slmkit.generate import Sequence

    made = []
    take = Sequence.take

    def recorded(self, logits, token=None):
        if not hasattr(self, "seen"):
            self.seen = []
            made.append(self)
        self.seen.append(logits.clone())
        return take(self, logits, token)

    monkeypatch.setattr(Sequence, "take", recorded)
    return made


@pytest.mark.parametrize("pos_embedding", POS_EMBEDDINGS)
def test_a_batch_gives_each_sequence_its_text_alone(pos_embedding, monkeypatch):
    """Prompts of different lengths (one past block_size), every sampling option, joining and leaving
    at different steps, windows sliding: each text equals the one-sequence text, its logits within 1e-5."""
    from slmkit.generate import Batch, prompt_ids

    tok = CharTokenizer.fit(["abcdefgh \n"])
    model = tiny_model(vocab_size=tok.vocab_size, pos_embedding=pos_embedding)
    stopped = SamplingParams(max_new_tokens=50, temperature=1.0, seed=4)
    stop = generate(model, tok, "ba", stopped)[20:22]
    jobs = [  # (prompt, params, the step it joins at)
        ("abc", SamplingParams(max_new_tokens=40, temperature=1.0, seed=1), 0),
        ("h", SamplingParams(max_new_tokens=3 * BLOCK, temperature=0, repetition_penalty=1.5), 0),
        ("", SamplingParams(max_new_tokens=12, temperature=0.7, top_k=3, seed=2), 0),
        ("abcdefgh abcdefgh ab", SamplingParams(max_new_tokens=30, temperature=1.2, top_p=0.8, seed=3), 2),
        ("ba", stopped.replace(stop=(stop, "zz")), 5),
        ("gg", SamplingParams(max_new_tokens=25, temperature=0.9, top_k=4, top_p=0.9, repetition_penalty=1.3, seed=5), 9),
        ("a", SamplingParams(max_new_tokens=0, seed=6), 3),
        ("dd", SamplingParams(max_new_tokens=20, temperature=1.0, seed=1), 20),  # joins after others have left
    ]
    made = _recording(monkeypatch)
    alone = []
    for prompt, params, _ in jobs:
        before = len(made)
        text = generate(model, tok, prompt, params)
        alone.append((text, made[before].seen if len(made) > before else []))
    assert len(alone[4][0]) <= 20  # the stop string ended it
    assert len({text for text, _ in alone}) == len(jobs)

    batch = Batch(model, tok, max_batch=5)  # fewer slots than sequences: the last ones wait for a free slot
    waiting = sorted(range(len(jobs)), key=lambda i: jobs[i][2])
    seqs, texts, step, widths = {}, {i: "" for i in range(len(jobs))}, 0, []
    while waiting or batch.active:
        while waiting and jobs[waiting[0]][2] <= step and batch.free:
            i = waiting.pop(0)
            seqs[i] = batch.add(prompt_ids(tok, jobs[i][0]), jobs[i][1])
        widths.append(len(batch.active))
        for seq in batch.step():
            texts[next(i for i, s in seqs.items() if s is seq)] += seq.text
        step += 1
    assert max(widths) == 5 and min(widths[1:-1]) < 5  # the batch filled, and sequences left while others went on
    for i, (text, logits) in enumerate(alone):
        assert texts[i] == text, f"sequence {i}"
        batched = getattr(seqs[i], "seen", [])
        assert len(batched) == len(logits)
        for a, b in zip(batched, logits):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_num_samples_decode_as_one_batch_with_the_texts_of_one_at_a_time(monkeypatch):
    from slmkit.generate import Batch

    tok = CharTokenizer.fit(["abcdefgh \n"])
    model = tiny_model(vocab_size=tok.vocab_size)
    params = SamplingParams(max_new_tokens=3 * BLOCK, temperature=1.0, top_k=6, seed=7, stop=("hh",))
    one_at_a_time = [generate(model, tok, "ab", params.nth(i)) for i in range(4)]
    widths = []
    step = Batch.step
    monkeypatch.setattr(Batch, "step", lambda self: widths.append(len(self.active)) or step(self))
    assert generate(model, tok, "ab", params, num_samples=4) == one_at_a_time
    assert widths[0] == 4 and len(widths) <= 3 * BLOCK  # all four in one batch, one step per token


def test_a_batch_ends_a_sequence_at_an_end_id_and_reports_logprobs():
    from slmkit.generate import Batch

    tok = CharTokenizer.fit(["abcdefgh \n"])
    model = tiny_model(vocab_size=tok.vocab_size)
    params = SamplingParams(max_new_tokens=40, temperature=1.0, seed=3)
    full = generate(model, tok, "a", params)
    end = tok.encode(full[5])[0]
    batch = Batch(model, tok, max_batch=2)
    seq = batch.add(tok.encode("a"), params, end_ids=[end], logprobs=3)
    text = ""
    while seq.finish_reason is None:
        logits = batch.forward()[0]
        seq.take(logits)
        token, logprob, top = seq.logprob
        log_probs = torch.log_softmax(logits, -1)
        assert math.isclose(logprob, float(log_probs[token]), abs_tol=1e-6)
        assert [i for i, _ in top] == torch.topk(log_probs, 3).indices.tolist()
        text += seq.text
    assert seq.finish_reason == "stop" and text == full[: full.index(full[5])]


@pytest.mark.parametrize("pos_embedding", ["learned", "rotary"])
def test_batched_decoding_gives_the_uncached_sdpa_logits_with_grouped_query_attention(pos_embedding, monkeypatch):
    """Three prompts of different lengths (one past block_size) decoded as one cached batch past block_size
    (windows sliding) with grouped-query attention: each step's logits are within 1e-5 of the uncached
    forward's (SDPA over the whole window) and the texts are equal."""
    from slmkit.generate import Batch

    tok = CharTokenizer.fit(["abcdefgh \n"])
    model = tiny_model(vocab_size=tok.vocab_size, pos_embedding=pos_embedding, n_head=4, n_kv_head=2)
    made = _recording(monkeypatch)
    prompts = ["a", "abcdefg", "abcdefgh abcdefgh ab"]
    params = SamplingParams(max_new_tokens=3 * BLOCK, temperature=0, repetition_penalty=1.5)
    runs = []
    for use_cache in (True, False):
        batch = Batch(model, tok, max_batch=3, use_cache=use_cache)
        seqs = [batch.add(tok.encode(p), params) for p in prompts]
        texts = ["", "", ""]
        while batch.active:
            for seq in batch.step():
                texts[seqs.index(seq)] += seq.text
        runs.append((texts, [seq.seen for seq in seqs]))
    (cached, cached_logits), (uncached, uncached_logits) = runs
    assert cached == uncached and all(len(t) == 3 * BLOCK for t in cached)
    for a_seq, b_seq in zip(cached_logits, uncached_logits):
        for a, b in zip(a_seq, b_seq, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
