"""A stand-in accelerator on the CPU, to catch device bugs without a GPU.

Inside ``FakeDevice()`` a tensor moved to ``FAKE`` (``.to(FAKE)``, ``module.to(FAKE)``, or made
with ``device=FAKE``) is an ``OnFake`` tensor: it reports ``device.type == "lazy"`` and computes
on the CPU. Every operation is checked with CUDA's rules, so the bugs that break a CUDA run here
raise ``DeviceMismatch`` on any machine:

- an accelerator tensor meets a CPU tensor with dimensions (0-dimensional CPU tensors pass, as on
  CUDA; so do CPU indices to ``x[idx]`` / ``x[idx] = v`` and the copies ``.to()`` / ``copy_``);
- a tensor is drawn on the accelerator with a CPU ``torch.Generator``;
- ``.numpy()`` of an accelerator tensor fails as on CUDA (numba kernels need an explicit move).

"lazy" is chosen because it is a device type this CPU build of torch accepts in ``.to()`` and
factory calls, that no library here special-cases (as they do "meta" or "mps"), and that is
neither "cpu" nor "cuda", so the code under test takes its pure-torch path on it. It relies on
``torch.utils._python_dispatch`` (TorchDispatchMode, wrapper subclasses), as torch's own
FakeTensor does.
"""

from __future__ import annotations

import types

import torch
from torch.utils._python_dispatch import TorchDispatchMode, return_and_correct_aliasing
from torch.utils._pytree import tree_flatten, tree_map

FAKE = torch.device("lazy")
aten = torch.ops.aten
COPIES = {aten._to_copy.default, aten.copy_.default}
# On CUDA, advanced indexing takes CPU index tensors (they are moved); index_select does not.
CPU_INDICES_OK = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default,
                  aten._index_put_impl_.default}


class DeviceMismatch(RuntimeError):
    """What CUDA would have raised: tensors on two devices, or a generator on the wrong one."""


class OnFake(torch.Tensor):
    """A CPU tensor ``elem`` that reports the FAKE device."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(
            cls, elem.shape, strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=elem.dtype, layout=elem.layout, device=FAKE, requires_grad=elem.requires_grad)

    def __init__(self, elem: torch.Tensor):
        self.elem = elem

    def __repr__(self) -> str:
        return f"OnFake({self.elem!r})"

    def tolist(self):  # works on CUDA (a copy to the host); not an aten op, so not dispatched
        return self.elem.tolist()

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


def _on_fake(device) -> bool:
    return device is not None and torch.device(device).type == FAKE.type


def _check(func, args, kwargs) -> None:
    flat = tree_flatten((args, kwargs))[0]
    generator = kwargs.get("generator")
    if _on_fake(kwargs.get("device")) and generator is not None and generator.device.type != FAKE.type:
        raise DeviceMismatch(f"{func}: draws on the accelerator with a {generator.device.type} generator")
    if func in COPIES or not any(isinstance(t, OnFake) for t in flat):
        return
    if func in CPU_INDICES_OK:  # args: (self, indices, *rest); indices may stay on the CPU
        flat = tree_flatten((args[0], args[2:], kwargs))[0]
    cpu = [t for t in flat if isinstance(t, torch.Tensor) and not isinstance(t, OnFake) and t.dim() > 0]
    if cpu:
        raise DeviceMismatch(f"{func}: an accelerator tensor meets a CPU tensor of shape {tuple(cpu[0].shape)}")


def _dispatch(func, args, kwargs):
    _check(func, args, kwargs)
    inputs_fake = any(isinstance(t, OnFake) for t in tree_flatten((args, kwargs))[0])
    to_fake = _on_fake(kwargs.get("device"))
    unwrap = lambda t: t.elem if isinstance(t, OnFake) else t  # noqa: E731
    real_args, real_kwargs = tree_map(unwrap, args), tree_map(unwrap, kwargs)
    if to_fake:
        real_kwargs["device"] = torch.device("cpu")
    out = func(*real_args, **real_kwargs)
    if func is aten._to_copy.default:  # .to(): the target device, else where it was
        fake_out = to_fake or (inputs_fake and kwargs.get("device") is None)
    else:
        fake_out = inputs_fake or to_fake
    if not fake_out:
        return out
    wrapped = tree_map(lambda t: OnFake(t) if isinstance(t, torch.Tensor) else t, out)
    return return_and_correct_aliasing(func, args, kwargs, wrapped)


class FakeDevice(TorchDispatchMode):
    """Inside it, ``FAKE`` is a usable device (see the module docstring)."""

    def __enter__(self):
        if not hasattr(torch, FAKE.type):  # torch.utils.checkpoint looks up torch.<device type>
            torch._register_device_module(FAKE.type, types.ModuleType(f"fake_{FAKE.type}"))
        # torch.tensor(data, device=...) builds on the CPU and lifts, so the mode sees the move.
        self._lift = torch._C._only_lift_cpu_tensors()
        torch._C._set_only_lift_cpu_tensors(True)
        return super().__enter__()

    def __exit__(self, *exc):
        torch._C._set_only_lift_cpu_tensors(self._lift)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if OnFake not in types and not _on_fake(kwargs.get("device")):  # plain CPU work: as it is
            return func(*args, **kwargs)
        return _dispatch(func, args, kwargs)
