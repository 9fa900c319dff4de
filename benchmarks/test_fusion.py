"""Inference with BatchNorm folded into the preceding layer (numbanorm.nn.utils.fuse_bn_eval)
against the same model unfused: the reference CNN of test_trainer.py in eval mode, forward of a
batch of 256 random 28x28 inputs (8 in quick mode). Both contenders run in the same session;
their outputs are compared before timing. Images/s go in extra_info.
"""
import numpy as np
import pytest

from .common import info

try:
    from numbanorm.nn.utils import fuse_bn_eval

    from .test_trainer import MISSING, ours_model
except ImportError as e:
    MISSING = f"numbanorm.nn.utils not importable ({e})"


def eval_models(batch):
    """(the reference CNN in eval mode, its copy with BatchNorm folded in, a random float32
    (batch, 1, 28, 28) input); three training forwards first move the running statistics away
    from (0, 1). Also used by bench_fusion.py."""
    rng = np.random.default_rng(0)
    model = ours_model()
    for _ in range(3):
        model(rng.standard_normal((16, 1, 28, 28)).astype(np.float32) * 2 + 0.5)
    fused = fuse_bn_eval(model)
    model.eval()
    return model, fused, rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)


@pytest.fixture(scope="module")
def models(quick):
    model, fused, x = eval_models(8 if quick else 256)
    y = model(x)
    np.testing.assert_allclose(fused(x), y, rtol=1e-4, atol=1e-4 * float(np.abs(y).max()))
    return {"unfused": model, "fused": fused}, x


@pytest.mark.skipif(MISSING is not None, reason=str(MISSING))
@pytest.mark.parametrize("contender", ["unfused", "fused"])
def test_cnn_inference_fused_vs_unfused(benchmark, models, contender):
    by_name, x = models
    model = by_name[contender]
    benchmark.group = f"cnn-eval-forward-batch{x.shape[0]}"
    benchmark.pedantic(model.forward, args=(x,), rounds=20, iterations=1, warmup_rounds=2)
    if benchmark.stats is not None:
        info(benchmark, contender=contender, images_per_s=x.shape[0] / benchmark.stats.stats.median)
