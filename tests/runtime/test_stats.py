from __future__ import annotations

import pytest

from dualcache._policy import Operation
from dualcache._stats import Stats


@pytest.mark.parametrize("layer", ["kv", "gateway", "provider"])
def test_stats_skip_counts_per_layer_apart_from_errors(layer: str) -> None:
    stats = Stats()
    stats.skip(Operation.EMBEDDINGS, layer, 3)
    snap = stats.snapshot()["embeddings"]
    assert snap[f"{layer}_skipped"] == 3
    assert (snap["errors"], snap["requests"]) == (0, 0)
    others = {f"{other}_skipped" for other in ("kv", "gateway", "provider")} - {f"{layer}_skipped"}
    assert {k: snap[k] for k in others} == dict.fromkeys(others, 0)


def test_stats_skip_rejects_an_unknown_layer() -> None:
    with pytest.raises(ValueError, match="layer='disk'"):
        Stats().skip(Operation.EMBEDDINGS, "disk")
