"""BatchNorm's variants on the GPU backend against the CPU backend (tests/test_variants.py checks
the CPU against the float64 reference). Under the CUDA simulator: tiny shapes, one-warp blocks,
few partial blocks (the fixture of tests/test_gpu.py), so channels split over several blocks."""
import numpy as np
import pytest

from numbanorm import cuda_support

pytest.importorskip("numba.cuda")
if not cuda_support.cuda_available():
    pytest.skip("CUDA (or the CUDA simulator) is not usable here", allow_module_level=True)

from numba import cuda  # noqa: E402

from numbanorm import functional as F  # noqa: E402
from numbanorm import nn  # noqa: E402

from .test_gpu import assert_close, check_op, dev, host, randn, small_launches  # noqa: E402,F401

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 2, 2, 2), (4, 7)])
def test_weight_standardization_matches_cpu(shape, dtype):
    rng = np.random.default_rng(1)
    w = randn(rng, shape, dtype, loc=0.2)
    dy = randn(rng, shape, dtype)
    w_hat, saved = F.weight_standardization(w)
    w_hat_g, saved_g = F.weight_standardization(dev(w))
    assert_close(w_hat_g, w_hat, dtype)
    assert_close(F.weight_standardization_backward(dev(dy), saved_g),
                 F.weight_standardization_backward(dy, saved), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, affine", [((5, 3), True), ((3, 2, 20), False), ((2, 3, 2, 3), True)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_renorm_matches_cpu(shape, dtype, affine, training):
    rng = np.random.default_rng(2)
    C = shape[1]
    x = randn(rng, shape, dtype, loc=1.0)
    w, b = (randn(rng, C, dtype), randn(rng, C, dtype)) if affine else (None, None)
    rm, rv = randn(rng, C, dtype) * 0.3, (np.abs(randn(rng, C, dtype)) + 0.5).astype(dtype)
    params = dict(weight=w, bias=b, running_mean=rm, running_var=rv)
    check_op(F.batch_renorm, F.batch_renorm_backward, x, params, dtype, rng, training=training,
             momentum=0.1, eps=1e-5, rmax=1.2, dmax=0.3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, mshape", [((5, 3), (5,)), ((3, 2, 20), (3, 20)), ((4, 2, 3), (4,)),
                                           ((2, 3, 2, 3), (2, 2, 3))])
def test_masked_batch_norm_matches_cpu(shape, mshape, dtype):
    rng = np.random.default_rng(3)
    C = shape[1]
    x = randn(rng, shape, dtype, loc=2.0)
    mask = rng.random(mshape) < 0.6
    mask.reshape(-1)[0] = False  # the first position is padding
    mask.reshape(-1)[1:3] = True
    w, b = randn(rng, C, dtype), randn(rng, C, dtype)
    params = dict(weight=w, bias=b, running_mean=np.zeros(C, dtype), running_var=np.ones(C, dtype),
                  mask=mask)  # the mask goes to the device like the parameters
    check_op(F.batch_norm, F.batch_norm_backward, x, params, dtype, rng, training=True, momentum=0.1)


def test_masked_batch_norm_large_mean_and_errors():
    rng = np.random.default_rng(4)
    x = (1e4 + rng.standard_normal((4, 2, 10))).astype(np.float32)
    mask = np.ones((4, 10), bool)
    mask[:, 7:] = False
    mask[0, 0] = False
    x[:, :, 7:] = 3e8
    x[0, :, 0] = 3e8
    y, _ = F.batch_norm(x, mask=mask)
    y_g, _ = F.batch_norm(dev(x), mask=dev(mask))
    sel = np.broadcast_to(mask[:, None], x.shape)
    np.testing.assert_allclose(host(y_g)[sel], y[sel], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="mask must be on x's device"):
        F.batch_norm(dev(x), mask=mask)
    with pytest.raises(ValueError, match="more than 1 selected"):
        F.batch_norm(dev(x), mask=dev(np.zeros(4, bool)))


def test_frozen_batch_norm_and_renorm_layers_on_gpu():
    rng = np.random.default_rng(5)
    x = randn(rng, (2, 3, 2, 2), np.float32, loc=1.0)
    dy = randn(rng, x.shape, np.float32)
    for make in (lambda d: nn.FrozenBatchNorm2d(3, device=d), lambda d: nn.BatchRenorm2d(3, device=d)):
        cpu_layer, gpu_layer = make("cpu"), make("cuda")
        state = {k: (v + rng.random(v.shape).astype(v.dtype)) if v.dtype == np.float32 else v
                 for k, v in cpu_layer.state_dict().items()}
        cpu_layer.load_state_dict(state)
        gpu_layer.load_state_dict(state)
        assert_close(gpu_layer(dev(x)), cpu_layer(x), np.float32)
        assert_close(gpu_layer.backward(dev(dy)), cpu_layer.backward(dy), np.float32)
        for pc, pg in zip(cpu_layer.parameters(), gpu_layer.parameters()):
            assert_close(pg.grad, pc.grad, np.float32)


def test_fuse_bn_eval_on_gpu():
    rng = np.random.default_rng(6)
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ReLU()).to("cuda")
    model(dev(randn(rng, (2, 2, 2, 2), np.float32, loc=1.0)))
    model.eval()
    fused = nn.utils.fuse_bn_eval(model)
    assert len(fused) == 2 and fused.device == "cuda"
    x = dev(randn(rng, (2, 2, 3, 3), np.float32))
    np.testing.assert_allclose(host(fused(x)), host(model(x)), rtol=1e-5, atol=1e-5)
    assert cuda.devicearray.is_cuda_ndarray(fused[0].weight.data)


def test_std_conv2d_on_gpu_matches_cpu():
    rng = np.random.default_rng(7)
    cpu_conv = nn.StdConv2d(2, 3, 3, padding=1, rng=0)
    gpu_conv = nn.StdConv2d(2, 3, 3, padding=1, rng=0, device="cuda")
    x = randn(rng, (2, 2, 4, 4), np.float32)
    y = cpu_conv(x)
    assert_close(gpu_conv(dev(x)), y, np.float32)
    dy = randn(rng, y.shape, np.float32)
    assert_close(gpu_conv.backward(dev(dy)), cpu_conv.backward(dy), np.float32)
    assert_close(gpu_conv.weight.grad, cpu_conv.weight.grad, np.float32)
    assert_close(gpu_conv.bias.grad, cpu_conv.bias.grad, np.float32)
