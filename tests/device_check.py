"""A torch function mode that finds tensors this project makes on the default device instead of its data's device.

On a GPU, `torch.arange(n)` next to a CUDA batch is a CPU tensor, and the next op that mixes the two fails ("Expected
all tensors to be on the same device"). On a CPU-only test machine every tensor is on the CPU, so the bug cannot
show. This mode records every factory call (arange, zeros, rand, tensor, ...) made directly by `vit_mnist` code that
does not name its device, so a CPU test can fail where a GPU run would. A tensor that is meant to live on the CPU says
so (`device="cpu"`, or `device=gen.device` for a CPU generator's draws); construction inside `__init__` is exempt,
since a module's parameters and buffers move with `.to(device)`. Ops whose tensor arguments sit on different devices
are recorded too (they can only occur where a second device exists, e.g. a GPU machine).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

import vit_mnist

PACKAGE_DIR = str(Path(vit_mnist.__file__).resolve().parent)
# torch's own dispatch of an op to a mode, between the op's caller and the mode
DISPATCH_FILES = ("torch/overrides.py", "torch/utils/_device.py")

# Factory functions whose result lands on the default device unless `device=` says otherwise.
FACTORIES = {
    torch.arange, torch.zeros, torch.ones, torch.full, torch.empty, torch.rand, torch.randn, torch.randint,
    torch.randperm, torch.eye, torch.linspace, torch.logspace, torch.tensor, torch.as_tensor, torch.scalar_tensor,
}
# tensor/as_tensor of a tensor keep that tensor's device
FROM_DATA = {torch.tensor, torch.as_tensor}


def _caller() -> tuple[str, int, str] | None:
    """(file, line, function) of the Python code that called the op, if it is vit_mnist's own code (a tensor that
    torch or a library such as torchmetrics makes inside its own functions is theirs to place)."""
    frame = sys._getframe(3)  # 0: here, 1: _problem, 2: __torch_function__, 3: the op's caller
    while frame is not None and frame.f_code.co_filename.endswith(DISPATCH_FILES):
        frame = frame.f_back
    if frame is None or not frame.f_code.co_filename.startswith(PACKAGE_DIR):
        return None
    return frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name


def _devices(args: tuple, kwargs: dict) -> set[torch.device]:
    """The devices of the tensors among an op's arguments (0-dim CPU tensors count as scalars, as torch treats them)."""
    found: set[torch.device] = set()

    def visit(value: object) -> None:
        if isinstance(value, torch.Tensor):
            if not (value.device.type == "cpu" and value.dim() == 0):
                found.add(value.device)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    visit(args)
    visit(tuple(kwargs.values()))
    return found


class DeviceCheck(TorchFunctionMode):
    """Within `with DeviceCheck() as check:`, `check.problems` lists each misplaced tensor as "file:line (func): why"."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        why = self._problem(func, args, kwargs)
        if why:
            self.problems.append(why) if why not in self.problems else None
        return func(*args, **kwargs)

    def _problem(self, func, args: tuple, kwargs: dict) -> str | None:  # noqa: ANN001
        """"file:line (function): why" when vit_mnist code made this op's tensor on the default device or mixed
        devices; None otherwise."""
        if func in FACTORIES and kwargs.get("device") is None:
            if func in FROM_DATA and args and isinstance(args[0], torch.Tensor):
                return None
            why = f"torch.{func.__name__} without device="
        elif len(_devices(args, kwargs)) > 1:
            why = f"{getattr(func, '__name__', func)} mixes {sorted(map(str, _devices(args, kwargs)))}"
        else:
            return None
        where = _caller()
        if where is None or where[2] == "__init__":
            return None
        path, line, name = where
        return f"{Path(path).relative_to(Path(PACKAGE_DIR).parent)}:{line} ({name}): {why}"
