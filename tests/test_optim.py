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
