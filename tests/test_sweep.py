"""Studies on Ray (benchmarks/sweep.py): the same figures as the serial run, a lost worker reported by name
and finished by --resume, and incomplete studies never summarised."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "benchmarks"), str(REPO_ROOT / "scripts")]

import sweep  # noqa: E402
from ray_study_table import figures, table  # noqa: E402  (the README block's script)

# The controller too: its choices hang on float sums, so the same torch threads serially and on Ray. Without the
# ablations: BatchNorm re-estimated on 30 images moves by an image between processes even on one thread.
QUICK = ["--quick", "--methods", "dpx,lrp", "--threads", "1", "--no-ablations"]


def _figures(study: dict) -> dict:
    """Every run's figures by (model, seed, method), without where, how long and on how many threads it ran."""
    return {(run["model"], run["seed"], run["method"]): figures(run) for run in study["runs"]}


def _add_one(shared, value):
    return {"value": shared + value}


def _lost_once(shared, marker):
    """A run whose worker dies the first time (as when a node goes away), and that succeeds once rerun."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return {"value": shared}


def test_serial_sweep_reports_a_failed_run_by_name_and_keeps_the_others(capsys):
    def broken(shared, _):
        raise ValueError("no such layer\nsecond line")

    landed = {}
    groups = [sweep.Group("g", lambda: 10, [(("m", 0, "ok"), _add_one, (1,)), (("m", 0, "bad"), broken, (0,))])]
    failed = sweep.run_sweep(groups, landed.__setitem__)
    assert failed == [{"key": ("m", 0, "bad"), "error": "ValueError: no such layer"}]
    assert list(landed) == [("m", 0, "ok")] and landed[("m", 0, "ok")]["value"] == 11
    assert landed[("m", 0, "ok")]["worker"] == sweep.worker_name() and landed[("m", 0, "ok")]["wall_s"] >= 0
    assert sweep.report_failures(failed, "study.json") == 1
    err = capsys.readouterr().err.splitlines()
    # (how many seconds "so far" depends on the machine: the first run imports torch)
    assert any(line.startswith("[sweep] m 0 bad: failed (ValueError: no such layer); 2/2 runs done (1 failed), ")
               and line.endswith(" s so far") for line in err)
    assert "failed: m 0 bad: ValueError: no such layer" in err


def test_ray_missing_is_one_line(monkeypatch):
    from runtime_bench.errors import InputError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError) as info:
        sweep.start_ray("auto")
    assert str(info.value) == '--ray auto: Ray is not installed (pip install -e ".[ray]")'


def test_a_bad_or_absent_cluster_is_one_line_in_seconds():
    pytest.importorskip("ray", reason="Ray is not installed (make test installs the [ray] extra)")
    from runtime_bench.errors import CheckFailed, InputError

    with pytest.raises(InputError) as info:
        sweep.start_ray("nonsense")
    assert str(info.value) == "--ray nonsense: expected auto or HOST:PORT of a Ray head (e.g. 10.0.0.5:6379)"
    with pytest.raises(CheckFailed) as info:
        sweep.start_ray("127.0.0.1:1")
    assert str(info.value).startswith("--ray 127.0.0.1:1: nothing answers there (")


@pytest.mark.slow
def test_quick_study_on_a_local_ray_matches_serial_and_a_lost_run_is_finished_by_resume(tmp_path, capfd):
    """One test, so that one local Ray (2 CPUs) serves every check of this file that needs it."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (make test installs the [ray] extra)")
    from auc_study import main

    assert main([*QUICK, "--out", str(tmp_path / "serial")]) == 0
    capfd.readouterr()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 str(REPO_ROOT / p) for p in sweep.SEARCH_PATH) + os.pathsep + str(REPO_ROOT / "tests")}})
    try:
        assert main([*QUICK, "--out", str(tmp_path / "ray"), "--ray", "auto"]) == 0
        serial = json.loads((tmp_path / "serial" / "auc_study_quick.json").read_text())
        on_ray = json.loads((tmp_path / "ray" / "auc_study_quick.json").read_text())
        assert _figures(on_ray) == _figures(serial) and len(on_ray["runs"]) == 2
        assert all(run["worker"] != sweep.worker_name() for run in on_ray["runs"])  # they ran on Ray's workers
        assert all(run["wall_s"] > 0 and run["torch_threads"] == 1 for run in on_ray["runs"])
        assert {k: {m: {s: v for s, v in r.items() if s != "seconds_mean"} for m, r in ms.items()}
                for k, ms in on_ray["summary"].items()} == \
               {k: {m: {s: v for s, v in r.items() if s != "seconds_mean"} for m, r in ms.items()}
                for k, ms in serial["summary"].items()}
        assert "2/2 runs done" in capfd.readouterr().err
        assert table(serial, on_ray).splitlines()[-1].endswith("| 2 of 2 | 2 of 2 |")

        # A worker lost mid-sweep: its run is named among the failures, the others land, and a rerun of
        # what is missing (what --resume does) finishes it.
        marker = str(tmp_path / "lost-once")
        landed = {}
        groups = [sweep.Group("g", lambda: 5, [(("m", 0, "lost"), _lost_once, (marker,)),
                                               (("m", 0, "fine"), _add_one, (2,))])]
        failed = sweep.run_sweep(groups, landed.__setitem__, ray="auto", progress=False)
        assert [f["key"] for f in failed] == [("m", 0, "lost")] and "Worker" in failed[0]["error"]
        assert landed[("m", 0, "fine")]["value"] == 7
        missing = [run for run in groups[0].runs if run[0] not in landed]
        assert sweep.run_sweep([sweep.Group("g", lambda: 5, missing)], landed.__setitem__, ray="auto",
                               progress=False) == []
        assert landed[("m", 0, "lost")]["value"] == 5
    finally:
        ray.shutdown()
