"""Top-k order equals torch.topk on CPU, ties and NaN included."""

from __future__ import annotations

import numpy as np
import pytest

from omg_rt.errors import InvalidInputError
from omg_rt.postprocess.topk import topk_indices

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("sorted_", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_topk_order_matches_torch_on_tie_heavy_inputs(seed, sorted_):
    rng = np.random.default_rng(seed)
    for trial in range(40):
        n = int(rng.integers(1, 2500))
        k = int(rng.integers(1, min(n, 110) + 1))
        if trial % 2:
            values = rng.integers(0, int(rng.integers(1, 5)), n).astype(np.float32)
        else:
            values = rng.standard_normal(n).astype(np.float32)
        if trial % 5 == 0:
            values[rng.integers(0, n, 2)] = np.nan
        want = torch.from_numpy(values).topk(k, sorted=sorted_).indices.numpy()
        np.testing.assert_array_equal(topk_indices(values, k, sorted=sorted_), want)


def test_partial_sort_path_with_ties_matches_torch():
    # Q * K >= 64 * k: torch uses std::partial_sort (the instance top-100 path).
    values = np.random.default_rng(7).integers(0, 50, 12000).astype(np.float32)
    want = torch.from_numpy(values).topk(100, sorted=False).indices.numpy()
    np.testing.assert_array_equal(topk_indices(values, 100, sorted=False), want)


def test_all_equal_scores_pick_what_torch_picks():
    # The official golden VOS case: sigmoid(iou) saturates to 1.0 for all 300 queries.
    expected = [199, 219, 218, 217, 216, 220, 205, 204, 203, 202, 201, 200, 206]
    got = topk_indices(np.ones(300, np.float32), 25, sorted=True)
    assert got[:13].tolist() == expected
    assert sorted(set(got.tolist())) == sorted(got.tolist()) and len(got) == 25


def test_k_out_of_range_raises():
    with pytest.raises(InvalidInputError, match="k: expected"):
        topk_indices(np.ones(3, np.float32), 4)
