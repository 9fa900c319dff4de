"""The shapes the op benchmarks run, in full mode and in quick (CI) mode."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """op: BatchNorm2d-train, BatchNorm2d-eval, BatchNorm1d-train, LayerNorm (over the last dim), GroupNorm
    (`groups` groups) or InstanceNorm2d (affine=False, no running stats: the layer defaults).
    variant: "" (float32, C-contiguous), "float16" (x/dy float16, float32 parameters: mixed
    precision) or "channels-last" (float32 x/dy with (N, *spatial, C) memory)."""

    op: str
    shape: tuple
    groups: int = 0
    variant: str = ""

    @property
    def label(self):
        s = "x".join(str(d) for d in self.shape)
        s = f"{s} G={self.groups}" if self.groups else s
        return f"{s} {self.variant}" if self.variant else s

    @property
    def training(self):
        return self.op != "BatchNorm2d-eval"

    def group(self, direction, device="cpu"):
        """The pytest-benchmark group: op + direction + shape (GPU groups are prefixed)."""
        g = f"{self.op} {direction} {self.label}"
        return g if device == "cpu" else f"{device.upper()} {g}"


SMALL = [  # per-call overhead
    Case("BatchNorm2d-train", (8, 16, 8, 8)),
    Case("BatchNorm2d-eval", (8, 16, 8, 8)),
    Case("LayerNorm", (32, 64)),
    Case("GroupNorm", (8, 64, 8, 8), 32),
    Case("InstanceNorm2d", (8, 16, 8, 8)),
]

FULL = [
    Case("BatchNorm2d-train", (64, 64, 56, 56)),
    Case("BatchNorm2d-train", (128, 32, 28, 28)),
    Case("BatchNorm2d-train", (256, 16, 14, 14)),
    Case("BatchNorm2d-eval", (64, 64, 56, 56)),
    Case("BatchNorm2d-eval", (128, 32, 28, 28)),
    Case("BatchNorm2d-eval", (256, 16, 14, 14)),
    Case("LayerNorm", (4096, 1024)),
    Case("LayerNorm", (16384, 256)),
    Case("GroupNorm", (32, 256, 28, 28), 32),
    Case("GroupNorm", (64, 64, 56, 56), 32),
    Case("InstanceNorm2d", (32, 64, 28, 28)),
    # the shapes users run most: transformer LayerNorm, an MLP's BatchNorm1d, a diffusion GroupNorm
    Case("LayerNorm", (8192, 768)),
    Case("LayerNorm", (2048, 4096)),
    Case("BatchNorm1d-train", (4096, 512)),
    Case("GroupNorm", (16, 512, 32, 32), 32),
    # float16 (mixed precision) and channels-last inputs, beside their float32 NCHW rows
    Case("BatchNorm2d-train", (64, 64, 56, 56), variant="float16"),
    Case("BatchNorm2d-train", (64, 64, 56, 56), variant="channels-last"),
    Case("BatchNorm2d-train", (32, 64, 28, 28)),
    Case("BatchNorm2d-train", (32, 64, 28, 28), variant="float16"),
    Case("BatchNorm2d-train", (32, 64, 28, 28), variant="channels-last"),
    Case("GroupNorm", (32, 256, 28, 28), 32, variant="float16"),
    Case("BatchNorm2d-eval", (64, 64, 56, 56), variant="float16"),
    Case("InstanceNorm2d", (32, 64, 28, 28), variant="float16"),
    # (no float16 LayerNorm row: torch's CPU float16 LayerNorm dweight is ~8e-3 off the float64
    # reference, past the check's 4e-3; benchmarks/layout_dtype_ratios.py times numbanorm's)
] + SMALL

# Quick mode: the small shapes plus one just large enough for the parallel floor kernels.
QUICK = SMALL + [Case("BatchNorm2d-train", (4, 16, 32, 32)),
                 Case("BatchNorm2d-train", (4, 16, 32, 32), variant="float16"),
                 Case("BatchNorm2d-train", (4, 16, 32, 32), variant="channels-last")]


def cases(quick):
    return QUICK if quick else FULL
