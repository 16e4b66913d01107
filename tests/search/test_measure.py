import math

import torch

from torchslim.search.measure import divergence, output_tensor, reference


def test_identical_outputs_cost_nothing():
    x = torch.randn(2, 5, 11)
    for kind in ("kl", "mse"):
        total, count = divergence(reference(x, kind), x, kind)
        assert abs(total) < 1e-5 and count == 10


def test_kl_matches_the_definition():
    p = torch.tensor([[0.7, 0.2, 0.1]])
    q = torch.tensor([[0.2, 0.5, 0.3]])
    total, count = divergence(reference(p.log(), "kl"), q.log(), "kl")
    expect = sum(a * math.log(a / b) for a, b in zip(p[0].tolist(), q[0].tolist()))
    assert count == 1 and abs(total - expect) < 1e-6


def test_mse_is_relative_to_the_output_scale():
    x = torch.randn(4, 8)
    a, _ = divergence(reference(x, "mse"), x * 1.1, "mse")
    b, _ = divergence(reference(100 * x, "mse"), 100 * x * 1.1, "mse")
    assert a > 0 and abs(a - b) / a < 1e-4
    assert abs(a / 4 - 0.01) < 1e-4          # 10% off everywhere: relative squared error 0.01 per row


def test_output_tensor_reads_model_outputs():
    class Out:
        logits = torch.ones(1)
    assert output_tensor(Out()) is Out.logits
    t = torch.zeros(2)
    assert output_tensor((t, 1)) is t and output_tensor({"last_hidden_state": t}) is t
