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
