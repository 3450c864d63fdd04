"""Compiled patch gathers (cgns.ops) against their pure-torch references: values, gradients, gradcheck."""

import pytest
import torch

from cgns import ops
from cgns.ops import reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Forward values are copies, so they must match bit for bit in every dtype. Gradients (scatter-adds of duplicate
# indices, accumulated in float32 for half types) within these tolerances:
GRAD_TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-2, torch.bfloat16: 5e-2}
CASES = [("cpu", torch.float32), ("cpu", torch.float64), ("cpu", torch.bfloat16)]
if torch.cuda.is_available():
    CASES += [("cuda", torch.float32), ("cuda", torch.float64), ("cuda", torch.float16), ("cuda", torch.bfloat16)]


def _device_ready(device, extension):
    if device == "cuda" and not getattr(extension, "WITH_CUDA", False):
        pytest.skip("extension built without CUDA")


def compare_with_reference(op, ref_op, data, args, grad_tol):
    """Same output, and the same gradient for one shared grad_out."""
    ours_in = data.clone().requires_grad_(True)
    ref_in = data.clone().requires_grad_(True)
    ours, ref = op(ours_in, *args), ref_op(ref_in, *args)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    assert torch.equal(ours.detach(), ref.detach())
    grad_out = torch.randn(ours.shape, generator=torch.Generator().manual_seed(0)).to(data.device, data.dtype)
    ours.backward(grad_out)
    ref.backward(grad_out)
    torch.testing.assert_close(ours_in.grad.float(), ref_in.grad.float(), atol=grad_tol, rtol=grad_tol)


# (B, L, D, M): empty batch, nothing picked, one token, D not a multiple of 8, more picks than tokens (duplicates)
TOKEN_SHAPES = [(0, 5, 8, 3), (2, 5, 8, 0), (1, 1, 3, 4), (3, 17, 13, 9), (2, 196, 70, 300)]


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("b,l,d,m", TOKEN_SHAPES)
def test_masked_patch_gather_matches_reference(extension, device, dtype, b, l, d, m):
    _device_ready(device, extension)
    gen = torch.Generator().manual_seed(b * 100 + l + d + m)
    tokens = torch.randn(b, l, d, generator=gen).to(device, dtype)
    index = torch.randint(0, l, (b, m), generator=gen).to(device)
    compare_with_reference(ops.masked_patch_gather, reference.reference_masked_patch_gather, tokens, (index,),
                           GRAD_TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_masked_patch_gather_non_contiguous(extension, device):
    _device_ready(device, extension)
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randn(3, 11, 20, generator=gen).to(device).transpose(1, 2)     # [3,20,11], feature stride 20
    index = torch.randint(0, 20, (3, 2 * 7), generator=gen).to(device)[:, ::2]    # strided index
    out = ops.masked_patch_gather(tokens, index)
    assert torch.equal(out, reference.reference_masked_patch_gather(tokens, index))


# (B, C, H, W, p, M): one-pixel patches, non-square image, grey and RGB, duplicates, empty; one tall image whose
# plane the CPU kernel splits into bands of patch rows, with densely picked rows (more picks than patches); few
# picks, so that most patch rows are skipped and the others sparsely picked.
IMAGE_SHAPES = [(0, 3, 8, 8, 4, 2), (2, 1, 8, 8, 4, 0), (2, 1, 6, 10, 1, 7), (2, 3, 12, 8, 4, 9),
                (2, 3, 64, 48, 16, 12), (1, 2, 48, 16, 4, 40), (3, 3, 20, 28, 4, 3)]


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("b,c,h,w,p,m", IMAGE_SHAPES)
def test_gather_patches_matches_reference(extension, device, dtype, b, c, h, w, p, m):
    _device_ready(device, extension)
    gen = torch.Generator().manual_seed(b + c + h + w + p + m)
    images = torch.randn(b, c, h, w, generator=gen).to(device, dtype)
    index = torch.randint(0, (h // p) * (w // p), (b, m), generator=gen).to(device)
    compare_with_reference(lambda x, i: ops.gather_patches(x, p, i),
                           lambda x, i: reference.reference_gather_patches(x, p, i), images, (index,),
                           GRAD_TOL[dtype])


def test_gather_patches_hand_computed(extension):
    """A 4x4 two-channel image in 2x2 patches: patch 1 is the top-right block, laid out (C, p, p)."""
    images = torch.arange(32.0).reshape(1, 2, 4, 4)
    out = ops.gather_patches(images, 2, torch.tensor([[1, 2]]))
    assert out[0, 0].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]
    assert out[0, 1].tolist() == [8, 9, 12, 13, 24, 25, 28, 29]


# (dtype, B, C, H, W, p, M): outputs over 1 MB whose pieces are whole cache lines, which the CPU forward writes
# with streaming stores; more picks than patches, so patches repeat and every patch row is picked.
STREAMED_SHAPES = [(torch.float32, 3, 3, 64, 96, 16, 150), (torch.float64, 2, 2, 40, 64, 8, 600),
                   (torch.bfloat16, 2, 1, 64, 64, 32, 300)]


@pytest.mark.parametrize("dtype,b,c,h,w,p,m", STREAMED_SHAPES)
def test_gather_patches_large_outputs(extension, dtype, b, c, h, w, p, m):
    gen = torch.Generator().manual_seed(m)
    images = torch.randn(b, c, h, w, generator=gen).to(dtype)
    index = torch.randint(0, (h // p) * (w // p), (b, m), generator=gen)
    expected = reference.reference_gather_patches(images, p, index)
    assert expected.numel() * expected.element_size() > 2 ** 20
    assert torch.equal(ops.gather_patches(images, p, index), expected)
    # The same into an `out` that starts one element past a cache line: the kernel must fall back to plain stores.
    buffer = torch.full((expected.numel() + 1,), float("nan"), dtype=dtype)
    out = buffer[1:].view(expected.shape)
    assert out.is_contiguous() and out.data_ptr() % 64 != 0
    extension.gather_patches_forward(images, p, index, out=out)
    assert torch.equal(out, expected)


def test_gather_patches_forward_two_threads(extension):
    """Two threads split one plane's patch rows between them; every picked pixel still lands once, in place."""
    gen = torch.Generator().manual_seed(11)
    images = torch.randn(1, 1, 96, 32, generator=gen)
    index = torch.randint(0, 24 * 8, (1, 100), generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        out = extension.gather_patches_forward(images, 4, index)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out, reference.reference_gather_patches(images, 4, index))


def test_gathers_gradcheck_float64(extension):
    gen = torch.Generator().manual_seed(4)
    tokens = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([[0, 4, 4], [2, 2, 1]])       # duplicates: the backward must add, not overwrite
    assert torch.autograd.gradcheck(lambda t: ops.masked_patch_gather(t, index), (tokens,))
    images = torch.randn(1, 2, 4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    patches = torch.tensor([[5, 0, 5]])
    assert torch.autograd.gradcheck(lambda x: ops.gather_patches(x, 2, patches), (images,))


def test_gathers_reject_bad_input(extension):
    with pytest.raises(RuntimeError, match=r"\[0, 5\)"):
        ops.masked_patch_gather(torch.randn(1, 5, 2), torch.tensor([[5]]))
    with pytest.raises(RuntimeError, match=r"\[0, 4\)"):
        ops.gather_patches(torch.randn(1, 1, 4, 4), 2, torch.tensor([[-1]]))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        ops.gather_patches(torch.randn(1, 1, 6, 4), 4, torch.tensor([[0]]))
    with pytest.raises(RuntimeError, match="multiple of the patch size"):
        extension.gather_patches_forward(torch.randn(1, 1, 6, 4), 4, torch.tensor([[0]]))


def test_backward_deterministic_with_threads(extension):
    gen = torch.Generator().manual_seed(6)
    grad_out = torch.randn(4, 300, 512, generator=gen)
    index = torch.randint(0, 50, (4, 300), generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = extension.masked_patch_gather_backward(grad_out, index, 50)
        second = extension.masked_patch_gather_backward(grad_out, index, 50)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, second)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cpu_equals_cuda(extension):
    _device_ready("cuda", extension)
    gen = torch.Generator().manual_seed(8)
    images = torch.randn(3, 3, 32, 32, generator=gen)
    index = torch.randint(0, 16, (3, 10), generator=gen)
    cpu = ops.gather_patches(images, 8, index)
    assert torch.equal(ops.gather_patches(images.cuda(), 8, index.cuda()).cpu(), cpu)
    tokens = torch.randn(3, 16, 40, generator=gen)
    assert torch.equal(ops.masked_patch_gather(tokens.cuda(), index.cuda()).cpu(),
                       ops.masked_patch_gather(tokens, index))


def test_forward_into_preallocated_out(extension):
    gen = torch.Generator().manual_seed(7)
    tokens, index = torch.randn(2, 9, 5, generator=gen), torch.randint(0, 9, (2, 4), generator=gen)
    out = torch.empty(2, 4, 5)
    assert extension.masked_patch_gather_forward(tokens, index, out=out).data_ptr() == out.data_ptr()
    assert torch.equal(out, reference.reference_masked_patch_gather(tokens, index))
    images = torch.randn(2, 3, 8, 8, generator=gen)
    out = torch.empty(2, 4, 3 * 4 * 4)
    extension.gather_patches_forward(images, 4, index % 4, out=out)
    assert torch.equal(out, reference.reference_gather_patches(images, 4, index % 4))
    with pytest.raises(RuntimeError, match="out must be"):
        extension.gather_patches_forward(images, 4, index % 4, out=torch.empty(2, 4, 47))


def test_double_backward_is_refused(extension):
    tokens = torch.randn(1, 4, 3, dtype=torch.float64, requires_grad=True)
    out = ops.masked_patch_gather(tokens, torch.tensor([[1, 1]]))
    (grad,) = torch.autograd.grad(out.square().sum(), tokens, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        grad.sum().backward()
