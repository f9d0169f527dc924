import pytest
import torch

from slmkit.optim import Muon, orthogonalize


@pytest.mark.parametrize("shape", [(32, 32), (96, 32), (32, 128)])
def test_orthogonalize_flattens_singular_values(shape):
    torch.manual_seed(0)
    G = torch.randn(*shape)
    X = orthogonalize(G)
    s = torch.linalg.svdvals(X)
    # Newton-Schulz with these coefficients lands every singular value in roughly [0.7, 1.2]
    assert s.min() > 0.5 and s.max() < 1.3
    # and keeps the singular vectors: X is close to U V^T in direction
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    cos = torch.nn.functional.cosine_similarity(X.flatten(), (U @ Vh).flatten(), dim=0)
    assert cos > 0.9


def test_muon_rejects_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(4))])


def test_muon_minimizes_a_least_squares_problem():
    torch.manual_seed(0)
    A = torch.randn(64, 16)
    W_true = torch.randn(16, 8)
    Y = A @ W_true
    W = torch.nn.Parameter(torch.zeros(16, 8))
    opt = Muon([W], lr=0.05)
    losses = []
    for _ in range(200):
        loss = ((A @ W - Y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]


def test_orthogonalize_a_stack_is_each_matrix_on_its_own():
    torch.manual_seed(0)
    for shape in [(3, 32, 32), (3, 96, 32), (2, 32, 128)]:
        G = torch.randn(*shape)
        stacked = orthogonalize(G)
        for i in range(shape[0]):
            torch.testing.assert_close(stacked[i], orthogonalize(G[i]), rtol=1e-4, atol=1e-5)


def test_muon_batched_step_matches_one_matrix_at_a_time():
    torch.manual_seed(0)
    shapes = [(16, 8), (16, 8), (8, 24), (16, 8)]  # two shapes, batched as groups of 3 and 1
    params = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    singles = [torch.nn.Parameter(p.detach().clone()) for p in params]
    together = Muon(params, lr=0.05, weight_decay=0.1)
    apart = [Muon([p], lr=0.05, weight_decay=0.1) for p in singles]
    for _ in range(3):
        grads = [torch.randn(*s) for s in shapes]
        for p, q, g in zip(params, singles, grads):
            p.grad, q.grad = g.clone(), g.clone()
        together.step()
        for opt in apart:
            opt.step()
    for p, q in zip(params, singles):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert not torch.equal(params[0], params[1])


def test_orthogonalize_is_the_quintic_newton_schulz_iteration():
    """X <- aX + (bA + cA^2)X with A = XX^T, wide side inward: the baddbmm form for near-square matrices,
    the Gram form (iterating on the m x m side) for wide ones."""
    torch.manual_seed(0)
    a, b, c = 3.4445, -4.7750, 2.0315
    for shape, steps in [((2, 48, 16), 5), ((16, 40), 3), ((3, 24, 24), 5), ((20, 28), 5)]:
        G = torch.randn(*shape)  # orthogonalize works in fp32
        X = G.mT if shape[-2] > shape[-1] else G
        X = X / torch.linalg.matrix_norm(X, keepdim=True)
        for _ in range(steps):
            A = X @ X.mT
            X = a * X + (b * A + c * A @ A) @ X
        expected = X.mT if shape[-2] > shape[-1] else X
        torch.testing.assert_close(orthogonalize(G, steps, eps=0.0), expected, rtol=1e-4, atol=1e-5)


def test_muon_ns_steps_reaches_the_optimizer():
    from slmkit.config import TrainConfig
    from slmkit.optim import make_optimizers

    model = torch.nn.Module()
    model.h = torch.nn.ModuleList([torch.nn.Linear(8, 8)])
    _, muon = make_optimizers(model, TrainConfig(optimizer="muon", muon_ns_steps=3), torch.device("cpu"))
    assert muon.param_groups[0]["ns_steps"] == 3


def test_decay_embeddings_moves_the_tables_into_the_decayed_group():
    from slmkit.config import ModelConfig, TrainConfig
    from slmkit.model import GPT
    from slmkit.optim import make_optimizers

    model = GPT(ModelConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, block_size=8))
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    for flag in (False, True):
        (adamw,) = make_optimizers(model, TrainConfig(decay_embeddings=flag), torch.device("cpu"))
        decayed = {id(p) for g in adamw.param_groups if g["weight_decay"] > 0 for p in g["params"]}
        assert (id(wte) in decayed, id(wpe) in decayed) == (flag, flag)
        assert id(model.transformer.h[0].attn.c_attn.weight) in decayed
        assert id(model.transformer.ln_f.weight) not in decayed  # norms never


@pytest.mark.parametrize("tied", [True, False])
def test_embedding_lr_steps_the_tables_at_their_own_lr(tied):
    from slmkit.config import ConfigError, ModelConfig, TrainConfig
    from slmkit.model import GPT
    from slmkit.optim import make_optimizers

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, block_size=8, tie_embeddings=tied))
    wte, head = model.transformer.wte.weight, model.lm_head.weight
    cfg = TrainConfig(optimizer="muon", lr=1e-3, embedding_lr=0.05, beta1=0.9)
    adamw, _ = make_optimizers(model, cfg, torch.device("cpu"))
    lr_of = {id(p): g["base_lr"] for g in adamw.param_groups for p in g["params"]}
    assert lr_of[id(wte)] == 0.05 and lr_of[id(model.transformer.ln_f.weight)] == 1e-3
    assert tied or lr_of[id(head)] == 1e-3  # an untied head is a matrix at train.lr
    for g in adamw.param_groups:
        g["lr"] = g["base_lr"]
    before_wte, before_head = wte.detach().clone(), head.detach().clone()
    idx = torch.randint(0, 50, (4, 8))
    model(idx, idx)[1].backward()
    adamw.step()
    # Adam's first step moves every element with a gradient by ~its lr (g / |g|)
    assert (wte - before_wte).abs().max().item() == pytest.approx(0.05, rel=0.01)
    if not tied:
        assert (head - before_head).abs().max().item() == pytest.approx(1e-3, rel=0.01)
    # 0 (the default) keeps every AdamW parameter at train.lr, in the groups it always had
    adamw, _ = make_optimizers(model, TrainConfig(optimizer="muon", lr=1e-3), torch.device("cpu"))
    assert {g["base_lr"] for g in adamw.param_groups} == {1e-3}
    with pytest.raises(ConfigError, match="train.embedding_lr"):
        TrainConfig(embedding_lr=-1.0).validate()


def test_make_optimizers_never_imports_torch_dynamo():
    # torch.optim imports torch._dynamo (~2 s of CPU) on an optimizer's first add_param_group and step;
    # a fresh process shows whether ours do (this test process may have imported it already)
    import subprocess
    import sys

    code = """
import sys, torch
from slmkit.config import ModelConfig, TrainConfig
from slmkit.model import GPT
from slmkit.optim import make_optimizers
model = GPT(ModelConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=32, block_size=8))
for kind in ("muon", "adam"):
    optimizers = make_optimizers(model, TrainConfig(optimizer=kind), torch.device("cpu"))
    model(torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))[1].backward()
    for o in optimizers:
        o.step()
        o.load_state_dict(o.state_dict())
        o.zero_grad()
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_our_adam_steps_exactly_as_torchs(kind):
    from slmkit.config import TrainConfig
    from slmkit.optim import make_optimizers

    torch.manual_seed(0)
    ours, theirs = (torch.nn.Linear(8, 4) for _ in range(2))
    theirs.load_state_dict(ours.state_dict())
    (opt,) = make_optimizers(ours, TrainConfig(optimizer=kind, lr=1e-2), torch.device("cpu"))
    torch_class = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    reference = torch_class([dict(g) for g in opt.param_groups], lr=1e-2, betas=(0.9, 0.99), fused=True)
    reference.param_groups[0]["params"], reference.param_groups[1]["params"] = [theirs.weight], [theirs.bias]
    assert isinstance(opt, torch_class)
    x = torch.randn(16, 8)
    for _ in range(3):
        for model, o in ((ours, opt), (theirs, reference)):
            o.zero_grad()
            model(x).square().mean().backward()
            o.step()
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)


def test_normuon_gives_every_row_the_same_norm_and_keeps_muons_step_size():
    """beta2 > 0 (NorMuon): on the first step every row of the update has the same norm (v is that step's
    row mean square), and the update's Frobenius norm is plain Muon's; later steps differ from Muon's."""
    torch.manual_seed(0)
    W0 = torch.randn(24, 8)
    runs = {}
    for beta2 in (0.0, 0.95):
        W = torch.nn.Parameter(W0.clone())
        opt = Muon([W], lr=0.1, beta2=beta2)
        updates = []
        for step in range(2):
            before = W.detach().clone()
            W.grad = torch.randn(24, 8, generator=torch.Generator().manual_seed(step)) * torch.arange(1, 25.0)[:, None]
            opt.step()
            updates.append(W.detach() - before)
        runs[beta2] = updates
    muon, normuon = runs[0.0], runs[0.95]
    row_norms = normuon[0].norm(dim=1)
    torch.testing.assert_close(row_norms, torch.full_like(row_norms, row_norms.mean().item()), rtol=1e-4, atol=0)
    assert muon[0].norm(dim=1).std() > 0.05 * muon[0].norm(dim=1).mean()  # plain Muon's rows differ
    torch.testing.assert_close(normuon[0].norm(), muon[0].norm(), rtol=1e-4, atol=0)
    assert not torch.allclose(normuon[1], muon[1], atol=1e-4)


def test_normuon_minimizes_a_least_squares_problem_and_reaches_the_optimizer():
    from slmkit.config import TrainConfig
    from slmkit.optim import make_optimizers

    torch.manual_seed(0)
    A, W_true = torch.randn(64, 16), torch.randn(16, 8)
    W = torch.nn.Parameter(torch.zeros(16, 8))
    opt = Muon([W], lr=0.05, beta2=0.95)
    first = None
    for _ in range(200):
        loss = ((A @ W - A @ W_true) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first or loss.item()
    assert loss.item() < 0.05 * first
    model = torch.nn.Module()
    model.h = torch.nn.ModuleList([torch.nn.Linear(8, 8)])
    _, muon = make_optimizers(model, TrainConfig(optimizer="muon", muon_beta2=0.9), torch.device("cpu"))
    assert muon.param_groups[0]["beta2"] == 0.9
