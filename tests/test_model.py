import torch

from slmkit.checkpoint import load_weights, save_weights
from slmkit.model import GPT, GPTConfig


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


def test_loss_falls_on_tiny_corpus():
    torch.manual_seed(0)
    text = "the quick brown fox jumps over the lazy dog. " * 20
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    model = GPT(tiny_config(vocab_size=len(chars)))
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
