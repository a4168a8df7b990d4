"""--method dpx on a real (tiny) run: the controller drives LRP scoring, masking and shrinking together."""

from __future__ import annotations

import pytest

from toolchain.config import PruneConfig
from toolchain.control.prune import prune
from toolchain.stages.prepare import prepare


@pytest.mark.slow
def test_dpx_reaches_its_rate_and_logs_every_decision(image_data):
    config = PruneConfig(model="resnet18", weights="none", data=str(image_data.small),
                         test_data=str(image_data.test), shots=4, image_size=32, method="dpx", rate=0.2,
                         round_to=8, batch_size=16)
    task = prepare(config, progress=False)
    result = prune(task, config, progress=False)
    log = result.controller
    assert result.graph.pruned_fraction >= 0.2 - 1e-3
    assert log["stopped_early"] is None
    kinds = {event["kind"] for event in log["events"]}
    assert kinds <= {"accept", "reject_halve", "order_change"} and kinds & {"accept", "order_change"}
    for event in log["events"]:
        assert {"rate_before", "rate_after", "step_filters", "a_before", "a_after"} <= set(event)
    committed = [e for e in log["events"] if e["kind"] != "reject_halve"]
    assert log["relevance_passes"] == len(committed)  # one initial pass + one after each commit but the last
    assert result.curve[-1]["filters"] == result.graph.filters
    assert result.curve[-1]["rate"] >= 0.2 - 1e-3
    # Every remaining channel count is still a multiple of 8.
    for name, kept in result.graph.kept.items():
        assert len(kept) % 8 == 0 or len(kept) == result.graph.original_out[name], name
