import pytest
import torch

from slmkit.config import ConfigError
from slmkit.model import GPT, GPTConfig, RMSNorm, _ReLUSquared, rms_norm
from slmkit.runs import load_weights, save_weights


def tiny_config(**kw) -> GPTConfig:
    base = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, dropout=0.0)
    base.update(kw)
    return GPTConfig(**base)


def test_parameter_names_follow_hf_gpt2():
    names = set(GPT(tiny_config()).state_dict())
    for name in [
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_proj.bias",
        "transformer.h.1.mlp.c_fc.weight",
        "transformer.h.1.mlp.c_proj.weight",
        "transformer.ln_f.bias",
        "lm_head.weight",
    ]:
        assert name in names


def test_tied_embeddings_and_parameter_count():
    model = GPT(tiny_config())
    assert model.lm_head.weight is model.transformer.wte.weight
    C, V, T, L = 32, 50, 16, 2
    per_block = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    assert model.num_parameters() == V * C + T * C + L * per_block + 2 * C


def test_causality():
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    idx = torch.randint(0, 50, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % 50
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert torch.equal(a[0, :10], b[0, :10])  # earlier positions do not see the change
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def _fox_losses(**options) -> list[float]:
    """Training losses of 60 AdamW steps of a tiny model on a repeated pangram (28 characters)."""
    torch.manual_seed(0)
    text = "the quick brown fox jumps over the lazy dog. " * 20
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    model = GPT(tiny_config(vocab_size=len(chars), **options))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        starts = torch.randint(0, len(data) - 17, (8,))
        batch = torch.stack([data[s : s + 17] for s in starts])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_loss_falls_on_tiny_corpus():
    losses = _fox_losses()
    assert losses[0] > 2.5  # about ln(vocab) at the start
    assert sum(losses[-10:]) / 10 < 1.0


def test_save_load_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    save_weights(model, tmp_path / "m.safetensors")
    torch.manual_seed(1)
    other = GPT(tiny_config()).eval()
    idx = torch.randint(0, 50, (2, 16))
    assert not torch.equal(model(idx)[0], other(idx)[0])
    load_weights(other, tmp_path / "m.safetensors")
    assert torch.equal(model(idx)[0], other(idx)[0])
    assert other.lm_head.weight is other.transformer.wte.weight  # still tied after loading


def test_too_long_sequence_is_an_error():
    model = GPT(tiny_config())
    try:
        model(torch.zeros(1, 17, dtype=torch.long))
    except ValueError as e:
        assert "block_size" in str(e)
    else:
        raise AssertionError("expected ValueError")


OPTIONS = [
    dict(pos_embedding="sinusoidal"),
    dict(pos_embedding="rotary"),
    dict(pos_embedding="none"),
    dict(norm="rmsnorm"),
    dict(mlp="relu2"),
    dict(mlp="gelu_exact"),
    dict(mlp="swiglu", d_ff=48),
    dict(qk_norm=True),
    dict(zero_init_proj=True),
    dict(tie_embeddings=False),
    dict(bias=False),
    dict(logit_softcap=5.0),
    dict(pos_embedding="rotary", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False, tie_embeddings=False),
    # a pretrained Qwen3's: grouped k/v heads, a head size apart from n_embd / n_head, learned QK-norm gains
    dict(pos_embedding="rotary", norm="rmsnorm", mlp="swiglu", qk_norm=True, qk_norm_gain=True, n_kv_head=1,
         head_dim=24, rope_theta=1e6, norm_eps=1e-5, bias=False),
]


def _randomize(model: GPT) -> GPT:
    """Non-zero weights everywhere (zero_init_proj would otherwise hide the attention)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_option_is_causal_and_saves_and_loads(options, tmp_path):
    model = _randomize(GPT(tiny_config(**options)))
    idx = torch.randint(0, 50, (2, 16))
    changed = idx.clone()
    changed[:, 10] = (idx[:, 10] + 1) % 50
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    save_weights(model, tmp_path / "m.safetensors")
    other = GPT(tiny_config(**options)).eval()
    load_weights(other, tmp_path / "m.safetensors")
    assert torch.equal(model(idx)[0], other(idx)[0])


@pytest.mark.parametrize("pos_embedding", ["learned", "sinusoidal", "rotary", "none", "rotary-gqa"])
def test_cached_forward_in_chunks_matches_the_full_forward(pos_embedding):
    gqa = dict(n_head=4, n_kv_head=2, head_dim=12) if pos_embedding == "rotary-gqa" else {}
    pos_embedding = pos_embedding.split("-")[0]
    model = _randomize(GPT(tiny_config(pos_embedding=pos_embedding, qk_norm=pos_embedding == "rotary", **gqa)))
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(batch_size=2)
        for lo, hi in [(0, 5), (5, 6), (6, 10), (10, 16)]:  # a prefill, one token, then chunks (masked)
            logits, _ = model(idx[:, lo:hi], cache=cache)
            assert logits.shape == (2, 1, 50) and cache.lengths == [hi, hi]
            torch.testing.assert_close(logits[:, 0], full[:, hi - 1], atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="block_size"):
            model(idx[:, :1], cache=cache)


@pytest.mark.parametrize("pos_embedding, n_kv_head", [("learned", 0), ("sinusoidal", 0), ("rotary", 1), ("none", 0)])
def test_cache_slots_of_different_lengths_each_give_their_own_logits(pos_embedding, n_kv_head):
    """Slots holding 3, 5 and 7 tokens, stepped together: consecutive slots (read as views, new keys put with
    one index_copy_) and slots with a gap (gathered) give each sequence its full-forward logits (also with
    grouped-query attention's fewer key/value heads)."""
    model = _randomize(GPT(tiny_config(pos_embedding=pos_embedding, n_kv_head=n_kv_head)))
    seqs = [torch.randint(0, 50, (n + 2,)) for n in (3, 5, 7)]
    with torch.no_grad():
        cache = model.new_cache(batch_size=4)
        for slot, ids in enumerate(seqs):
            model(ids[None, :-2], cache=cache, slots=[slot])
        for rows, at in [([0, 1, 2], -2), ([0, 2], -1)]:
            idx = torch.stack([seqs[r][at] for r in rows])[:, None]  # (B, 1): each slot's next token
            logits, _ = model(idx, cache=cache, slots=rows)
            for b, r in enumerate(rows):
                full, _ = model(seqs[r][None, : len(seqs[r]) + at + 1])
                torch.testing.assert_close(logits[b, 0], full[0, -1], atol=1e-5, rtol=0)
        assert cache.lengths == [5, 6, 9, 0]


@pytest.mark.parametrize("pos_embedding, n_kv_head", [("learned", 0), ("rotary", 2), ("rotary", 1)])
def test_decoding_takes_the_decode_attention_with_sdpa_logits(pos_embedding, n_kv_head, monkeypatch):
    """Slots of 3, 8 and 13 tokens decoded together one token a step up to block_size (each leaves when full,
    so the rows differ in length and then in slots): every step goes through decode(), never SDPA, and gives
    each row the full forward's (SDPA's) logits within 1e-5, with and without grouped-query attention."""
    from torch.nn import functional as F

    model = _randomize(GPT(tiny_config(pos_embedding=pos_embedding, n_head=4, n_kv_head=n_kv_head)))
    block = model.config.block_size
    seqs = [torch.randint(0, 50, (block,), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    queries = []  # the query length of every SDPA call
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, *a, **kw: queries.append(q.size(2)) or sdpa(q, *a, **kw))
    with torch.no_grad():
        cache = model.new_cache(batch_size=3)
        for slot, n in enumerate((3, 8, 13)):
            model(seqs[slot][None, :n], cache=cache, slots=[slot])
        steps = 0
        while rows := [s for s in range(3) if cache.lengths[s] < block]:
            at = [cache.lengths[r] for r in rows]
            logits, _ = model(torch.stack([seqs[r][n] for r, n in zip(rows, at)])[:, None], cache=cache, slots=rows)
            for b, (r, n) in enumerate(zip(rows, at)):
                full, _ = model(seqs[r][None, : n + 1])
                torch.testing.assert_close(logits[b, 0], full[0, -1], atol=1e-5, rtol=0)
            steps += 1
    assert steps == block - 3 and cache.lengths == [block] * 3
    assert 1 not in queries and len(queries) == model.config.n_layer * (3 + sum(block - n for n in (3, 8, 13)))


def test_position_options_and_their_parameters():
    names = set(GPT(tiny_config(pos_embedding="rotary")).state_dict())
    assert "transformer.wpe.weight" not in names and not any("rope" in n for n in names)
    sinusoidal = GPT(tiny_config(pos_embedding="sinusoidal"))
    assert "pos_table" not in sinusoidal.state_dict()  # fixed, recomputed at load
    table = sinusoidal.pos_table * 32**0.5  # stored divided by sqrt(n_embd)
    assert table[0, 0] == 0.0 and torch.isclose(table[0, 1], torch.tensor(1.0))  # sin(0), cos(0)
    assert torch.isclose(table[3, 2], torch.sin(torch.tensor(3.0) / 10000 ** (2 / 32)))
    assert torch.isclose(table[3, 3], torch.cos(torch.tensor(3.0) / 10000 ** (2 / 32)))
    # rotary keeps lengths and is a rotation by position: q.k depends only on the distance
    from slmkit.model import _rotate

    model = GPT(tiny_config(pos_embedding="rotary"))
    q, k = torch.randn(16), torch.randn(16)
    rot = lambda x, p: _rotate(x.view(1, 1, 1, 16), model.rope_cos[p : p + 1], model.rope_sin[p : p + 1]).flatten()
    assert torch.isclose(rot(q, 5).norm(), q.norm())
    assert torch.isclose(rot(q, 7) @ rot(k, 4), rot(q, 3) @ rot(k, 0), atol=1e-5)


def test_parameter_counts_by_hand():
    C, V, T, L, F = 32, 50, 16, 2, 48
    # swiglu, rmsnorm, no bias, untied, rotary: norms C weights; attn 3C*C + C*C; mlp 3 * C*F
    model = GPT(tiny_config(mlp="swiglu", d_ff=F, norm="rmsnorm", bias=False, tie_embeddings=False, pos_embedding="rotary"))
    per_block = 2 * C + 4 * C * C + 3 * C * F
    assert model.num_parameters() == V * C + L * per_block + C + C * V  # wte + blocks + ln_f + lm_head
    assert model.num_parameters(non_embedding=True) == L * per_block + C + C * V
    assert model.flops_per_token() == 6 * (L * per_block + C + C * V) + 12 * L * C * T
    # head_dim wider than n_embd / n_head (Qwen3's shape): attention is n_head * head_dim wide
    wide = GPT(tiny_config(n_head=4, head_dim=16))
    assert wide.flops_per_token() == 6 * wide.num_parameters(non_embedding=True) + 12 * L * 4 * 16 * T
    # gelu with d_ff, sinusoidal (no parameters for positions), biases, tied
    model = GPT(tiny_config(d_ff=F, pos_embedding="sinusoidal"))
    per_block = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * F + F) + (F * C + C)
    assert model.num_parameters() == V * C + L * per_block + 2 * C
    assert model.num_parameters(non_embedding=True) == model.num_parameters()


def test_zero_init_and_untied_embeddings():
    model = GPT(tiny_config(zero_init_proj=True, tie_embeddings=False))
    for block in model.transformer.h:
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()
        assert block.attn.c_attn.weight.any()
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert "lm_head.weight" in model.state_dict()


def test_logit_softcap_bounds_the_logits():
    idx = torch.randint(0, 50, (2, 16))
    raw = _randomize(GPT(tiny_config()))
    capped = GPT(tiny_config(logit_softcap=0.5)).eval()
    capped.load_state_dict(raw.state_dict())
    with torch.no_grad():
        logits, _ = raw(idx)
        bounded, loss = capped(idx, idx)
    assert logits.abs().max() > 0.5 and bounded.abs().max() < 0.5  # the randomized model's logits run past the cap
    torch.testing.assert_close(bounded, 0.5 * torch.tanh(logits / 0.5))
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(bounded.view(-1, 50), idx.view(-1)))


def test_norm_and_mlp_modules():
    model = GPT(tiny_config(norm="rmsnorm", mlp="relu2", qk_norm=True))
    assert isinstance(model.transformer.h[0].ln_1, RMSNorm) and isinstance(model.transformer.ln_f, RMSNorm)
    mlp = model.transformer.h[0].mlp
    x = torch.randn(3, 32)
    assert torch.allclose(mlp(x), mlp.c_proj(torch.relu(mlp.c_fc(x)) ** 2))
    swiglu = GPT(tiny_config(mlp="swiglu")).transformer.h[0].mlp
    assert swiglu.c_fc.out_features == 128  # d_ff 0 = 4 * n_embd
    assert torch.allclose(swiglu(x), swiglu.c_proj(torch.nn.functional.silu(swiglu.c_gate(x)) * swiglu.c_fc(x)))
    for kind, approximate in (("gelu", "tanh"), ("gelu_exact", "none")):  # GPT-2's GELU and nanoGPT's nn.GELU()
        gelu = GPT(tiny_config(mlp=kind)).transformer.h[0].mlp
        expected = gelu.c_proj(torch.nn.functional.gelu(gelu.c_fc(x), approximate=approximate))
        assert torch.equal(gelu(x), expected)
    bias_free = GPT(tiny_config(bias=False))
    assert not any(name.endswith(".bias") for name in bias_free.state_dict())
    assert any(name.endswith(".bias") for name in GPT(tiny_config()).state_dict())


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("pos_embedding", "alibi", "model.pos_embedding='alibi' is not known"),
        ("norm", "batchnorm", "model.norm="),
        ("mlp", "geglu", "model.mlp="),
        ("d_ff", -1, "model.d_ff=-1"),
        ("logit_softcap", -1.0, "model.logit_softcap=-1.0"),
    ],
)
def test_bad_options_are_config_errors(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        tiny_config(**{key: value}).validate()
    with pytest.raises(ConfigError, match="even head size"):
        tiny_config(pos_embedding="rotary", n_embd=30, n_head=2).validate()


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_option_learns(options):
    assert _fox_losses(**options)[-1] < 1.3  # from ln(28) = 3.3 at the start


def _value_and_grads(fn, *inputs, grad_out):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    out.backward(grad_out)
    return out.detach(), [t.grad for t in inputs]


def test_relu_squared_matches_autograd_of_the_formula():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 48, dtype=torch.float64)
    x[0, 0, :4] = 0.0  # relu's kink: both give the gradient 0 there
    g = torch.randn_like(x)
    ours, (dx,) = _value_and_grads(_ReLUSquared.apply, x, grad_out=g)
    ref, (ref_dx,) = _value_and_grads(lambda t: torch.relu(t).square(), x, grad_out=g)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(_ReLUSquared.apply, (x[:1, :2].clone().requires_grad_(True),))


@pytest.mark.parametrize("with_weight", [False, True])
def test_rms_norm_matches_torch_values_and_gradients(with_weight):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 32, dtype=torch.float64) * 3
    w = torch.randn(32, dtype=torch.float64)
    g = torch.randn_like(x)
    inputs = (x, w) if with_weight else (x,)
    ours, grads = _value_and_grads(lambda *t: rms_norm(*t, eps=1e-6), *inputs, grad_out=g)
    ref, ref_grads = _value_and_grads(
        lambda *t: torch.nn.functional.rms_norm(t[0], (32,), *t[1:], eps=1e-6), *inputs, grad_out=g
    )
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda t: rms_norm(t), (x[:1, :2].clone().requires_grad_(True),))


def test_rmsnorm_module_loads_torch_rmsnorm_state():
    ours, theirs = RMSNorm(16), torch.nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        theirs.weight.normal_()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(ours(x), theirs(x))


def test_rope_theta_is_the_rotary_base():
    hs, p = 16, torch.arange(16.0)[:, None]
    for theta in (10000.0, 1e6):
        model = GPT(tiny_config(pos_embedding="rotary", **({} if theta == 10000.0 else {"rope_theta": theta})))
        angles = p * theta ** (-torch.arange(0, hs, 2) / hs)  # (T, hs/2)
        torch.testing.assert_close(model.rope_cos, angles.cos())
        torch.testing.assert_close(model.rope_sin, angles.sin())


def test_norm_eps_reaches_every_norm():
    default_rms, default_ln = GPT(tiny_config(norm="rmsnorm", qk_norm=True)), GPT(tiny_config())
    assert default_rms.transformer.ln_f.eps == default_rms.transformer.h[0].attn.eps == 1e-6
    assert default_ln.transformer.h[0].ln_1.eps == 1e-5
    model = GPT(tiny_config(norm="rmsnorm", qk_norm=True, qk_norm_gain=True, norm_eps=1e-2))
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    assert len(norms) == 2 * 2 + 2 * 2 + 1 and all(m.eps == 1e-2 for m in norms)  # ln_1/2, q/k_norm per layer, ln_f
    x = torch.randn(3, 32) * 0.05  # small: the epsilon shows
    torch.testing.assert_close(norms[-1](x), torch.nn.functional.rms_norm(x, (32,), norms[-1].weight, eps=1e-2))
    assert GPT(tiny_config(norm_eps=1e-3)).transformer.ln_f.eps == 1e-3


def test_learned_qk_norm_gains_scale_the_normalized_queries_and_keys():
    weightless = _randomize(GPT(tiny_config(pos_embedding="rotary", qk_norm=True)))
    gains = GPT(tiny_config(pos_embedding="rotary", qk_norm=True, qk_norm_gain=True)).eval()
    state = gains.state_dict()
    assert state["transformer.h.0.attn.q_norm.weight"].shape == (16,)  # one gain per head dimension
    missing, unexpected = gains.load_state_dict(weightless.state_dict(), strict=False)
    assert sorted(missing) == [f"transformer.h.{i}.attn.{n}_norm.weight" for i in range(2) for n in "kq"] and not unexpected
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(gains(idx)[0], weightless(idx)[0])  # gains of ones: the weightless QK-norm
        gains.transformer.h[0].attn.q_norm.weight.mul_(3.0)
        assert not torch.allclose(gains(idx)[0], weightless(idx)[0], atol=1e-3)
    with pytest.raises(ConfigError, match="qk_norm_gain=true needs model.qk_norm=true"):
        tiny_config(qk_norm_gain=True).validate()


def test_grouped_query_attention_equals_heads_sharing_repeated_keys_and_values():
    gqa = _randomize(GPT(tiny_config(pos_embedding="rotary", n_head=4, n_kv_head=2)))
    mha = GPT(tiny_config(pos_embedding="rotary", n_head=4)).eval()
    state = gqa.state_dict()
    for name in [n for n in state if ".attn.c_attn." in n]:  # weight and bias rows: q, then k, then v
        q, k, v = state[name].split((32, 16, 16))
        k, v = (t.unflatten(0, (2, 8)).repeat_interleave(2, 0).flatten(0, 1) for t in (k, v))  # query head j reads j // 2
        state[name] = torch.cat((q, k, v))
    mha.load_state_dict(state)
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(gqa(idx)[0], mha(idx)[0], atol=1e-5, rtol=0)
    assert gqa.new_cache(3).k.shape == (2, 3, 2, 16, 8)  # (L, slots, n_kv, T, hs): only the k/v heads are cached
    assert gqa.transformer.h[0].attn.c_attn.weight.shape == (32 + 2 * 16, 32)
    with pytest.raises(ConfigError, match="model.n_kv_head=3 must divide model.n_head=4"):
        tiny_config(n_head=4, n_kv_head=3).validate()


def test_head_dim_apart_from_n_embd_over_n_head():
    model = GPT(tiny_config(n_embd=30, n_head=2, head_dim=24, pos_embedding="rotary"))  # 30 % 2 == 0, 30 / 2 = 15 odd
    attn = model.transformer.h[0].attn
    assert attn.c_attn.weight.shape == (3 * 2 * 24, 30) and attn.c_proj.weight.shape == (30, 2 * 24)
    assert model.rope_cos.shape == (16, 12)
    tiny_config(n_embd=30, n_head=4, head_dim=8).validate()  # n_embd need not be a multiple of n_head then
    with pytest.raises(ConfigError, match="not divisible"):
        tiny_config(n_embd=30, n_head=4).validate()
