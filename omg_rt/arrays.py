"""Arrays that may live on a device: host numpy arrays, or the torch tensors a backend keeps where
it computed them.

The PyTorch backend leaves the big intermediate tensors (backbone features, the pixel decoder's
memories, the stride-4 mask logits) on its device: the next graph takes them from there, the
encoder cache holds them there, and post-processing on that device reads them without a copy
(:mod:`omg_rt.postprocess.device`). Everything that needs host memory asks :func:`to_host`, which
is free for numpy arrays and for tensors on the CPU. torch is never imported here: a tensor is
recognised by the methods it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# np.ndarray, or a torch.Tensor (typed Any: omg_rt does not depend on torch)
Array = Any


def is_host(value: object) -> bool:
    return isinstance(value, np.ndarray)


def is_tensor(value: object) -> bool:
    """A torch tensor (anything with ``detach`` and ``cpu`` and a ``dtype``)."""
    return not isinstance(value, np.ndarray) and all(
        hasattr(value, a) for a in ("detach", "cpu", "dtype", "shape"))


def to_host(value: Array) -> np.ndarray:
    """A numpy view of ``value`` (a copy from the device for a tensor on a GPU); anything that is
    neither a tensor nor an array is returned as it is, for the caller's own type checks."""
    if is_tensor(value):
        return np.asarray(value.detach().cpu().numpy())
    return value  # type: ignore[no-any-return]


def dtype_name(value: Array) -> str:
    """``float32`` for numpy's and torch's float32 alike."""
    return str(value.dtype).removeprefix("torch.")


def contiguous(value: Array) -> Array:
    if is_tensor(value):
        return value.contiguous()
    return np.ascontiguousarray(value)


def concat(values: Sequence[Array], axis: int = 0) -> Array:
    """Concatenation of arrays of one kind (all numpy, or all tensors on one device); a single
    array comes back as it is."""
    if len(values) == 1:
        return values[0]
    if all(is_host(v) for v in values):
        return np.concatenate(list(values), axis=axis)
    import torch  # a tensor is here, so torch is installed

    device = next(v.device for v in values if is_tensor(v))
    return torch.cat([v if is_tensor(v) else torch.from_numpy(np.asarray(v)).to(device)
                      for v in values], dim=axis)


def row(value: Array, i: int) -> Array:
    """Row ``i`` of the leading axis as a (1, ...) contiguous float32 array of its own (a copy when
    there are other rows, so that what is kept of one image does not hold the whole batch)."""
    if is_tensor(value):
        out = value[i : i + 1].float().contiguous()
        shared = out.untyped_storage().data_ptr() == value.untyped_storage().data_ptr()
        return out.clone() if value.shape[0] > 1 and shared else out
    out = np.ascontiguousarray(value[i : i + 1], dtype=np.float32)
    return out.copy() if value.shape[0] > 1 and np.shares_memory(out, value) else out


__all__ = ["Array", "concat", "contiguous", "dtype_name", "is_host", "is_tensor", "row", "to_host"]
