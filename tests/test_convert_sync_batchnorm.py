"""convert_sync_batchnorm on a trained, modified model: every BatchNorm becomes a
SyncBatchNorm with the same parameters, gradients, buffers, options and train/eval mode (no
MPI needed: converting and eval mode never communicate)."""
import numpy as np

from numbanorm import nn, optim


def trained_model():
    rng = np.random.default_rng(3)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4, momentum=None),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 6),
                          nn.BatchNorm1d(6, eps=1e-3, momentum=0.3, affine=False), nn.ReLU(),
                          nn.Linear(6, 3), nn.BatchNorm1d(3, track_running_stats=False))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        x = rng.standard_normal((8, 2, 5, 5)).astype(np.float32)
        y = model(x)
        model.zero_grad()
        model.backward(rng.standard_normal(y.shape).astype(np.float32))
        opt.step()
    y = model(x)  # gradients present at conversion time
    model.zero_grad()
    model.backward(rng.standard_normal(y.shape).astype(np.float32))  # not ones: BN's grads would be ~0
    model[1].weight.data[0] = 5.0  # modified by hand
    model[1].running_var[2] = 7.0
    model[5].eval()  # one layer in eval mode, the others training
    return model


def test_convert_copies_parameters_buffers_and_mode():
    model = trained_model()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    olds = [m for m in model if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    grads = {id(m): (m.weight.grad.copy() if m.weight is not None else None) for m in olds}
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    news = [m for m in converted if isinstance(m, nn.SyncBatchNorm)]
    assert len(news) == 3 and not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and
                                      not isinstance(m, nn.SyncBatchNorm) for m in converted)
    after = converted.state_dict()
    assert list(after) == list(before)
    for k in before:
        assert after[k].dtype == before[k].dtype and np.array_equal(after[k], before[k]), k
    assert int(after["1.num_batches_tracked"]) == 4
    assert after["1.weight"][0] == 5.0 and after["1.running_var"][2] == 7.0
    for old, new in zip(olds, news):
        for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats", "training",
                     "dtype", "device"):
            assert getattr(new, attr) == getattr(old, attr), attr
        if old.weight is not None:
            assert np.array_equal(new.weight.grad, grads[id(old)])
    assert [m.training for m in news] == [True, False, True]
    # the eval-mode layer computes exactly what the original did (no communication in eval)
    x = np.random.default_rng(5).standard_normal((4, 6)).astype(np.float32)
    assert np.array_equal(news[1](x), olds[1](x))
