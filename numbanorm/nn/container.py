"""Sequential: layers run in order, backward in reverse; state_dict keys "0.weight", ... as PyTorch."""
from .module import Module


class Sequential(Module):
    """Runs its layers in order; backward runs them in reverse. Children are named "0", "1", ...
    so state_dict keys match PyTorch's ("0.weight", "1.running_mean", ...)."""

    def __init__(self, *layers):
        devices = set()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} must be a numbanorm.nn.Module, got {type(layer).__name__}")
            if layer._parameters or layer._buffers:
                devices.add(layer.device)
        if len(devices) > 1:
            raise ValueError(f"Sequential: layers are on different devices {sorted(devices)}; use .to(device)")
        super().__init__(devices.pop() if devices else "cpu")
        for i, layer in enumerate(layers):
            layer.to(self.device)
            setattr(self, str(i), layer)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for layer in self._modules.values():
            x = layer.forward(x)
        return x

    _takes_input_grad = True

    def backward(self, dy, input_grad=True):
        """Backward through every layer in reverse; returns dx. input_grad=False (the input is
        data, as in a training loop) lets a first Conv2d/Linear skip computing dx; then the
        result may be None."""
        layers = list(self._modules.values())
        for i in range(len(layers) - 1, -1, -1):
            layer = layers[i]
            if i == 0 and not input_grad and getattr(layer, "_takes_input_grad", False):
                dy = layer.backward(dy, input_grad=False)
            else:
                dy = layer.backward(dy)
        return dy

    def __repr__(self):
        inner = "".join(f"\n  ({k}): {m!r}" for k, m in self._modules.items())
        return f"Sequential({inner}\n)"
