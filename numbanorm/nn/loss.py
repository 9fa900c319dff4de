"""CrossEntropyLoss with PyTorch's arguments (reduction, ignore_index, label_smoothing); the
math is numbanorm.functional.cross_entropy."""
from .. import functional as F
from .module import OpModule


class CrossEntropyLoss(OpModule):
    """Softmax + negative log-likelihood of integer class labels.

    loss = crit(logits (N, K), labels (N,)) -> a Python float ('mean', 'sum') or an (N,) array
    ('none'); crit.backward(dloss=1.0) -> dlogits (N, K). Labels may be a NumPy array when the
    logits are on the GPU.
    """

    def __init__(self, reduction="mean", ignore_index=-100, label_smoothing=0.0):
        super().__init__("cpu")
        if reduction not in F.loss.REDUCTIONS:
            raise ValueError(f"reduction must be one of {F.loss.REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    def forward(self, logits, labels):
        self._check_input(logits, (2,), name="logits")
        loss, saved = F.cross_entropy(logits, labels, self.reduction, self.ignore_index,
                                      self.label_smoothing)
        self._keep(saved)
        return loss

    def backward(self, dloss=1.0):
        dlogits = F.cross_entropy_backward(dloss, self._pending())
        self._release()
        return dlogits

    def extra_repr(self):
        s = f"reduction={self.reduction!r}"
        if self.ignore_index != -100:
            s += f", ignore_index={self.ignore_index}"
        if self.label_smoothing:
            s += f", label_smoothing={self.label_smoothing}"
        return s
