"""The README's API tour runs as written (under the CUDA simulator when there is no GPU)."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_api_tour_runs():
    block = re.search(r"## API tour\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace = {}
    exec(compile(block, str(README), "exec"), namespace)
    assert namespace["y"].shape == (32, 64, 28, 28)
    assert namespace["bn"].weight.grad is not None
    assert namespace["loss"] > 0
