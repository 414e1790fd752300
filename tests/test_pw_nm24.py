"""2:4 masks on PW weights: at most 2 non-zeros in every 4 input channels, the 2 largest kept, shapes unchanged."""
from __future__ import annotations

import numpy as np
import onnx

from deprune_onnx.pw import apply_nm24
from deprune_onnx.pw.nm24 import mask_2_of_4
from support.pw_graphs import GraphBuilder, random_feeds, run, weight


def test_mask_keeps_the_two_largest_of_every_four_with_ties_to_the_lower_index():
    w = np.array([[1.0, -3.0, 2.0, 0.5, 1.0, 1.0, 1.0, 1.0]], np.float32).reshape(1, 8, 1, 1)
    masked = mask_2_of_4(w).reshape(-1)
    np.testing.assert_array_equal(masked, [0.0, -3.0, 2.0, 0.0, 1.0, 1.0, 0.0, 0.0])


def test_masks_on_a_model_and_report_rows():
    g = GraphBuilder(seed=31)
    x = g.relu(g.conv("input", 3, 6, kernel=3))
    odd = g.relu(g.conv(x, 6, 16))  # C_in = 6 does not qualify
    out = g.conv(g.relu(g.dw(odd, 16)), 16, 8)
    model = g.model("input", [1, 3, 6, 6], [out])
    masked, rows = apply_nm24(model)
    onnx.checker.check_model(masked, full_check=True)
    by_layer = {row["layer"]: row for row in rows}
    assert len(rows) == 2 and sorted(row["qualifies"] for row in rows) == [False, True]
    for node in (n for n in masked.graph.node if n.name in by_layer):
        row = by_layer[node.name]
        w = weight(masked, node.name)
        assert w.shape == weight(model, node.name).shape
        if row["qualifies"]:
            groups = w.reshape(w.shape[0], -1, 4)
            assert (np.count_nonzero(groups, axis=2) <= 2).all() and row["sparsity_after"] >= 0.5
        else:
            assert "multiple of 4" in row["reason"]
            np.testing.assert_array_equal(w, weight(model, node.name))
    feeds = random_feeds(model)
    assert run(masked, feeds)[0].shape == run(model, feeds)[0].shape
