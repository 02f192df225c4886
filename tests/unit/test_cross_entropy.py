import pytest
import torch
import torch.nn.functional as F

from llama_course.layers.cross_entropy import IGNORE_INDEX, linear_cross_entropy


def unfused(hidden, weight, targets, reduction):
    return F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_loss_and_gradients_equal_the_unfused_float64_computation(reduction, chunk_size):
    torch.manual_seed(0)
    hidden = torch.randn(23, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(41, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 41, (23,))
    targets[[0, 5, 6]] = IGNORE_INDEX
    loss = linear_cross_entropy(hidden, weight, targets, reduction=reduction, chunk_size=chunk_size)
    (loss * 1.7).backward()  # a non-unit incoming gradient must scale both gradients
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    expected = unfused(hidden, weight, targets, reduction)
    (expected * 1.7).backward()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[0], hidden.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], weight.grad, rtol=1e-12, atol=1e-12)


def test_gradcheck():
    torch.manual_seed(0)
    hidden = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, IGNORE_INDEX, 5, 0, 2])
    assert torch.autograd.gradcheck(lambda h, w: linear_cross_entropy(h, w, targets, chunk_size=2), (hidden, weight))


def test_all_targets_ignored_gives_zero_not_nan():
    hidden, weight = torch.randn(3, 4, requires_grad=True), torch.randn(5, 4)
    loss = linear_cross_entropy(hidden, weight, torch.full((3,), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad.abs().sum().item() == 0.0


def test_no_rows_gives_zero_loss_and_zero_gradients():
    hidden = torch.randn(0, 4, requires_grad=True)
    weight = torch.randn(5, 4, requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(weight.grad, torch.zeros(5, 4))


@pytest.mark.parametrize("autocast", [False, True])
def test_bfloat16_inputs_match_the_float64_computation(autocast):
    """bf16 hidden states or CPU autocast take the converting matmul path; the softmax still runs in float32."""
    torch.manual_seed(0)
    hidden64, weight64 = torch.randn(12, 16, dtype=torch.float64), torch.randn(9, 16, dtype=torch.float64) * 0.3
    targets = torch.randint(0, 9, (12,))
    dtype = torch.float32 if autocast else torch.bfloat16
    hidden = hidden64.to(dtype).requires_grad_()
    weight = weight64.to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = linear_cross_entropy(hidden, weight, targets, chunk_size=5)
    loss.backward()
    reference_hidden = hidden.detach().double().requires_grad_()
    reference_weight = weight.detach().double().requires_grad_()
    expected = unfused(reference_hidden, reference_weight, targets, "mean")
    expected.backward()
    assert loss.dtype == torch.float32 and weight.grad.dtype == dtype
    torch.testing.assert_close(loss.double(), expected, rtol=0.02, atol=0.02)
    torch.testing.assert_close(weight.grad.double(), reference_weight.grad, rtol=0.05, atol=0.02)
    torch.testing.assert_close(hidden.grad.double(), reference_hidden.grad, rtol=0.05, atol=0.02)


def test_bad_arguments():
    hidden, weight, targets = torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="reduction='max'"):
        linear_cross_entropy(hidden, weight, targets, reduction="max")
    with pytest.raises(ValueError, match="chunk_size=0"):
        linear_cross_entropy(hidden, weight, targets, chunk_size=0)
