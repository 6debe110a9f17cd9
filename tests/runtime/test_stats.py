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


def test_stats_served_without_provider_counts_hits_and_coalesced_and_unknown_prices() -> None:
    from dualcache import Outcome, Policies, PriceTable, Stats

    policies = Policies.with_overrides({"rank_jobs": {"kv": False, "gateway": "cache", "gateway_ttl": 600}})
    stats = Stats(PriceTable(), policies)
    assert stats.snapshot()["rank_jobs"]["served_without_provider"] is None
    stats.record("rank_jobs", Outcome.PROVIDER)
    stats.record("rank_jobs", Outcome.COALESCED, 2)
    stats.record("rank_jobs", Outcome.GATEWAY_HIT)
    snap = stats.snapshot()["rank_jobs"]
    assert (snap["served_without_provider"], snap["cost"], snap["saved"], snap["kv"]) == (0.75, None, None, False)
    row = next(line for line in stats.report().splitlines() if line.startswith("rank_jobs"))
    assert row.split()[1:3] == ["4", "–"] and row.split()[-2:] == ["unknown", "unknown"]
    stats.record("not_declared", Outcome.PROVIDER)  # counted anyway, listed after the policies' operations
    assert list(stats.snapshot())[-2:] == ["rank_jobs", "not_declared"]
    stats.reset()
    assert list(stats.snapshot())[-1] == "rank_jobs"


def test_stats_record_prices_with_the_table_in_place_when_counted() -> None:
    from dualcache import Outcome, PriceTable

    stats = Stats(PriceTable(embeddings=0.5))
    stats.record(Operation.EMBEDDINGS, Outcome.KV_HIT, 2)
    stats.record("embeddings", Outcome.PROVIDER)  # a plain name counts in the same row
    stats.prices = PriceTable(embeddings=2.0)  # prices the requests counted from now on
    stats.record(Operation.EMBEDDINGS, Outcome.COALESCED)
    snap = stats.snapshot()["embeddings"]
    assert (snap["requests"], snap["kv_hits"], snap["provider_calls"], snap["coalesced"]) == (4, 2, 1, 1)
    assert (snap["cost"], snap["saved"]) == (0.5, 3.0)
    assert list(stats.snapshot()).count("embeddings") == 1
