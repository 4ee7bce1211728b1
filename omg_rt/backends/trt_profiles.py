"""TensorRT optimisation profiles: the (min, opt, max) shape of every graph input with dynamic
axes, from what each axis counts. One rule set for the exporter (``export.engines``, per export
target) and the runtime (engines built on first use, from ``TensorRTOptions``); stdlib only, so
the runtime imports it without torch.

A dynamic axis is named in the manifest (``N``, ``B``, ``Q``, ``P``, ``K``, ``S``, ``H``, ``W``,
``H/s``, ``W/s``; see ``export.graphs``); :func:`axis_meaning` says what it counts, and a table of
ranges per meaning gives its (min, opt, max). ``N`` counts different things per graph: encoder
images, frames of the pixel and query decoders, texts of the text encoder. Height and width are
in padded input pixels (:func:`spatial_ranges`, from the bundle's ``input`` contract); a map at
stride s gets the range divided by s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omg_rt.errors import BundleError

# (min, opt, max); opt None = the bundle's own count (``counts``: ``Q``, ``K``, ``S``).
Range = tuple[int, int | None, int]

_MEANINGS = {
    "B": "batch",
    "Q": "queries",
    "P": "prompts",
    "K": "classes",
    "S": "synonyms",
}

# Ranges per export target (``omg-export --target``).
TARGET_RANGES: dict[str, dict[str, Range]] = {
    "h100": {"images": (1, 1, 8), "frames": (1, 1, 8), "batch": (1, 1, 4),
             "queries": (1, None, 512), "prompts": (1, 16, 256), "classes": (1, None, 1536),
             "synonyms": (1, None, 32), "texts": (1, 64, 512)},
    "jetson-orin": {"images": (1, 1, 4), "frames": (1, 1, 4), "batch": (1, 1, 2),
                    "queries": (1, None, 320), "prompts": (1, 16, 64), "classes": (1, None, 512),
                    "synonyms": (1, None, 32), "texts": (1, 64, 256)},
}
TARGET_RANGES["cpu"] = TARGET_RANGES["h100"]


def spatial_ranges(contract: Mapping[str, Any]) -> dict[str, Range]:
    """``height`` and ``width`` (min, opt, max) in padded pixels from a manifest ``input``
    section: min_hw to max_hw, opt = a 3:4 landscape photo at the image scale (768 x 1024 for
    the official 1024 scale), or the fixed size of a fixed-shape bundle."""
    fixed = contract.get("fixed_hw")
    if fixed:
        h, w = (int(v) for v in fixed)
        return {"height": (h, h, h), "width": (w, w, w)}
    lo = [int(v) for v in contract["min_hw"]]
    hi = [int(v) for v in contract["max_hw"]]
    divisor = int(contract.get("size_divisor", 32))
    long_edge, short_edge = (int(v) for v in contract["image_scale"])
    factor = min(max(long_edge, short_edge) / 4, min(long_edge, short_edge) / 3)
    opt = [-(-int(3 * factor + 0.5) // divisor) * divisor,
           -(-int(4 * factor + 0.5) // divisor) * divisor]
    return {name: (lo[i], min(max(opt[i], lo[i]), hi[i]), hi[i])
            for i, name in enumerate(("height", "width"))}


def _stride(symbol: str) -> int:
    """``H`` -> 1, ``H/8`` -> 8."""
    return int(symbol.split("/", 1)[1]) if "/" in symbol else 1


def axis_meaning(input_name: str, symbol: str) -> str | None:
    """What the dynamic axis ``symbol`` of input ``input_name`` counts (None: unknown).

    ``N`` is ``images`` for the encoder's ``image``, ``texts`` for the text encoder's
    ``token_ids`` and ``frames`` for every pixel- and query-decoder input.
    """
    if symbol == "N":
        return {"image": "images", "token_ids": "texts"}.get(input_name, "frames")
    if symbol.split("/", 1)[0] in ("H", "W"):
        return "height" if symbol[0] == "H" else "width"
    return _MEANINGS.get(symbol)


def runtime_ranges(
    *,
    max_batch: int,
    max_frames: int,
    max_prompts: int,
    max_classes: int,
    max_synonyms: int,
    max_texts: int,
    counts: Mapping[str, int],
) -> dict[str, Range]:
    """The runtime's ranges (``TensorRTOptions``): one image or clip per call (batch 1), up to
    ``max_prompts`` prompt queries, and at least the bundle's own queries, classes, synonyms
    (``counts``: ``Q``, ``K``, ``S``)."""
    q, k, s = counts["Q"], counts["K"], counts["S"]
    return {
        "images": (1, 1, max_batch),
        "frames": (1, 1, max(max_batch, max_frames)),
        "batch": (1, 1, 1),
        "queries": (1, q, max(q, max_prompts)),
        "prompts": (1, 8, max_prompts),
        "classes": (1, k, max(k, max_classes)),
        "synonyms": (1, s, max(s, max_synonyms)),
        "texts": (1, 14, max_texts),
    }


def profile_shapes(
    inputs: Mapping[str, Sequence[int | str | None]],
    ranges: Mapping[str, Range],
    counts: Mapping[str, int],
    *,
    graph: str = "",
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes of every input with a dynamic axis.

    Args:
        inputs: input name -> its dims, fixed sizes as ints and dynamic axes by their manifest
            name (``"N"``, ``"Q"``...).
        ranges: meaning -> (min, opt, max), e.g. ``TARGET_RANGES[target]`` or
            :func:`runtime_ranges`.
        counts: the bundle's own sizes by axis name (``Q`` queries, ``K`` classes, ``S``
            synonyms): opt where a range has None (1 when absent).
        graph: the graph's name, for error messages.

    Returns:
        input name -> (min shape, opt shape, max shape), opt clamped into [min, max]; inputs
        without dynamic axes are left out.

    Raises:
        BundleError: a dynamic axis whose name has no rule.
    """
    shapes = {}
    for name, dims in inputs.items():
        if all(isinstance(d, int) for d in dims):
            continue
        lo_shape, opt_shape, hi_shape = [], [], []
        for axis, dim in enumerate(dims):
            if isinstance(dim, int):
                lo = opt = hi = dim
            else:
                meaning = axis_meaning(name, dim) if isinstance(dim, str) else None
                if dim is None or meaning is None or meaning not in ranges:
                    raise BundleError(
                        f"tensorrt: no profile rule for {graph}.{name} axis {axis} ({dim!r})"
                    )
                lo, wanted, hi = ranges[meaning]
                opt = min(max(counts.get(dim, 1) if wanted is None else wanted, lo), hi)
                if meaning in ("height", "width"):  # pixels -> this map's stride
                    stride = _stride(dim)
                    lo, opt, hi = (-(-v // stride) for v in (lo, opt, hi))
            lo_shape.append(lo)
            opt_shape.append(opt)
            hi_shape.append(hi)
        shapes[name] = (tuple(lo_shape), tuple(opt_shape), tuple(hi_shape))
    return shapes
