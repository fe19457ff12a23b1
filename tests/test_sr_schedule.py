"""benchmarks/sr_schedule.py's choice: the cheapest K within tolerance of the largest K's quality."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from sr_schedule import PAPER_ITERATIONS, choose, parse_schedule, schedule_name  # noqa: E402


def _row(k, psnr, lpips, seconds):
    return {"mode": "3dsr", "k": k, "total_iterations": 5 * k, "psnr": psnr, "lpips_alex": lpips,
            "mv_warp": 0.01, "seconds": seconds}


def test_choose_takes_the_cheapest_row_within_both_tolerances():
    rows = [_row(100, 25.00, 0.400, 10.0), _row(300, 25.45, 0.396, 30.0), _row(1000, 25.52, 0.3905, 100.0),
            _row(3000, 25.50, 0.390, 300.0)]
    c = choose(rows, tol_psnr=0.1, tol_lpips=0.005)
    # K=300 is within 0.1 dB but 0.006 LPIPS above K=3000; K=1000 is the first within both
    assert c["k"] == 1000 and c["reference_k"] == 3000
    assert c["psnr_delta"] == pytest.approx(0.02) and c["lpips_alex_delta"] == pytest.approx(0.0005)
    assert c["cost_vs_reference"] == pytest.approx(1 / 3, abs=1e-4)
    assert c["seconds_vs_reference"] == pytest.approx(1 / 3, abs=1e-4)
    assert c["cost_vs_paper"] == pytest.approx(5000 / PAPER_ITERATIONS)
    assert choose(rows, tol_psnr=0.6, tol_lpips=0.02)["k"] == 100
    assert choose(rows[-1:], 0.1, 0.005)["k"] == 3000  # only the reference: itself


def test_metric_reads_plain_and_structured_entries():
    from sr_schedule import metric
    assert metric({"PSNR": 25.5}, "PSNR") == 25.5
    assert metric({"MV-warp": {"value": 0.0185, "pairs": 1}}, "MV-warp") == 0.0185
    with pytest.raises(SystemExit, match="unavailable"):
        metric({"MV-warp": {"unavailable": "no depth"}}, "MV-warp")


def test_schedules_parse_and_compete_with_uniform_k():
    assert parse_schedule("100,200,500,1200:1000", 4) == ([100, 200, 500, 1200], 1000)
    assert parse_schedule("100,200,500,1200", 4) == ([100, 200, 500, 1200], 1200)
    assert schedule_name("3dsr", [100, 200], 50) == "3dsr_s100-200_f50"
    for bad in ("100,200,500", "a,b,c,d", "1,2,3,-4", "1,2,3,4:x"):
        with pytest.raises(SystemExit, match="--schedules entry"):
            parse_schedule(bad, 4)
    ramp = {"mode": "3dsr", "k": None, "label": "100+200+500+1200+1000", "total_iterations": 3000, "psnr": 25.46,
            "lpips_alex": 0.3920, "mv_warp": 0.01, "seconds": 20.0}
    rows = [_row(300, 25.00, 0.400, 10.0), ramp, _row(1000, 25.52, 0.3905, 100.0), _row(3000, 25.50, 0.390, 300.0)]
    c = choose(rows, tol_psnr=0.1, tol_lpips=0.005)
    assert c["label"] == "100+200+500+1200+1000" and c["total_iterations"] == 3000 and c["reference_label"] == "K=3000"
    assert c["cost_vs_paper"] == pytest.approx(3000 / PAPER_ITERATIONS)


def test_stop_rows_are_named_apart_and_recorded_rows_merge(tmp_path):
    import json
    from sr_schedule import merge_recorded, stop_name
    assert stop_name("3dsr_k1000", 0.05, 100) == "3dsr_k1000_stop0.05"
    assert stop_name("3dsr_k1000", 0.05, 224) == "3dsr_k1000_stop0.05_w224"
    settings, scene = {"steps": 4, "sr_model": "embedded-x4", "seed": 0}, {"lr_res": 8, "scale": 4, "train_iters": 1500}
    old = [{**_row(100, 25.6, 0.387, 300.0), "label": "K=100"}, {**_row(3000, 24.6, 0.364, 7900.0), "label": "K=3000"}]
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"rows": old, "settings": settings, "scene": scene}))
    new = [{**_row(100, 25.65, 0.386, 310.0), "label": "K=100"}]
    merged = merge_recorded(new, str(path), settings, scene)
    # the row run again stays this run's, with its difference from the record; the other joins as recorded
    assert [(r["label"], r.get("recorded", False)) for r in merged] == [("K=100", False), ("K=3000", True)]
    assert merged[0]["recorded_difference"] == {"psnr": 0.05, "lpips_alex": -0.001, "mv_warp": 0.0}
    assert choose(merged, 0.1, 0.005)["reference_k"] == 3000
    with pytest.raises(SystemExit, match="seed"):
        merge_recorded(new, str(path), {**settings, "seed": 1}, scene)
    with pytest.raises(SystemExit, match="lr_res"):
        merge_recorded(new, str(path), settings, {**scene, "lr_res": 4})
    with pytest.raises(SystemExit, match="not a result"):
        merge_recorded(new, str(tmp_path / "missing.json"), settings, scene)
