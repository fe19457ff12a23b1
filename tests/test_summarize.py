"""tools/summarize.py on synthetic results.json / timings.json files: exact means, unavailable metrics,
per-method stage times, table shape, --methods, --paper, bad input."""
import csv
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tools import summarize as S  # noqa: E402
from utils.errors import ThreeDSRError  # noqa: E402

UNAV = {"unavailable": "no MEt3R package; pip install met3r"}


def results(psnr, ssim, fid, niqe=None):
    r = {"views": 3, "PSNR": psnr, "SSIM": ssim, "LPIPS-alex": {"value": 0.25}, "LPIPS-vgg": 0.3,
         "FID": fid, "MV-warp": {"value": 0.02, "pairs": 2}, "MEt3R": UNAV}
    if niqe is not None:
        r["NIQE"] = niqe
    return r


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


@pytest.fixture
def out_root(tmp_path):
    root = tmp_path / "llff_run"
    write_json(root / "fern" / "results.json", {
        "3dsr": results(25.0, 0.8, {"value": 30.0, "num_images": 3}, niqe=4.0),
        "lr-3dgs": results(21.0, 0.6, {"unavailable": "no Inception weights"}, niqe=6.0),
        "ours_300": results(30.0, 0.9, 1.0)})
    write_json(root / "fern" / "timings.json", {"train_lr": 10.0, "3dsr/sr_refine": 100.0, "bogus": "x"})
    write_json(root / "room" / "results.json", {
        "3dsr": results(27.5, 0.7, {"unavailable": "FID needs at least 2 images per set, this folder has 1"}),
        "lr-3dgs": results(22.0, 0.5, {"unavailable": "no Inception weights"}, niqe=5.0)})
    # both ways of naming a method's own stage: "<folder>/<stage>" and "<stage> <folder>" (run_scene.py)
    write_json(root / "room" / "timings.json", {"train_lr": 20.0, "sr_refine 3dsr": 300.0, "lr-3dgs/render": 2.0})
    write_json(root / "room" / "unavailable.json", {"per-view-sr": "no diffusion SR weights", "3dsr": "stale"})
    (root / "not_a_scene").mkdir()  # no results.json: ignored
    return root


def cli(*args):
    return subprocess.run([sys.executable, "tools/summarize.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_metric_keys_match_metrics_py():
    from evaluation.evaluate import KEYS
    assert list(S.METRIC_KEYS) == list(KEYS.values())
    assert set(S.HIGHER_IS_BETTER) == set(S.METRIC_KEYS)


def test_csv_and_json_hold_exact_means(out_root):
    proc = cli(out_root)
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(out_root / "results.csv")
    assert list(rows[0]) == (["scene", "method", "folder", "views"] + list(S.METRIC_KEYS) +
                             ["train_lr [s]", "sr_refine [s]", "render [s]"])
    # known methods first in their fixed order, other folders after, as they are named
    assert [(r["scene"], r["folder"]) for r in rows] == [
        ("fern", "lr-3dgs"), ("fern", "3dsr"), ("fern", "ours_300"),
        ("room", "lr-3dgs"), ("room", "per-view-sr"), ("room", "3dsr"),
        ("mean", "lr-3dgs"), ("mean", "per-view-sr"), ("mean", "3dsr"), ("mean", "ours_300")]
    assert [r["method"] for r in rows[:3]] == ["LR 3DGS @HR", "3DSR", "ours_300"]
    # a method that could not run (unavailable.json) has a row of unavailable metrics, results win over it
    assert all(rows[4][k] == "unavailable" for k in S.METRIC_KEYS) and rows[4]["method"] == "Per-view SR → 3DGS"
    assert rows[5]["PSNR"] == "27.5"
    mean = {r["folder"]: r for r in rows if r["scene"] == "mean"}
    assert float(mean["3dsr"]["PSNR"]) == (25.0 + 27.5) / 2
    assert float(mean["lr-3dgs"]["SSIM"]) == (0.6 + 0.5) / 2
    assert float(mean["3dsr"]["LPIPS-alex"]) == 0.25 and float(mean["3dsr"]["MV-warp"]) == 0.02
    assert float(mean["3dsr"]["FID"]) == 30.0  # only fern has it
    assert float(mean["3dsr"]["NIQE"]) == 4.0  # room did not compute it
    assert mean["lr-3dgs"]["FID"] == "unavailable" and mean["3dsr"]["MEt3R"] == "unavailable"
    # stage times: scene stages on every row, "<method>/<stage>" only on that method's rows
    assert float(mean["3dsr"]["train_lr [s]"]) == 15.0 and float(mean["3dsr"]["sr_refine [s]"]) == 200.0
    assert mean["lr-3dgs"]["sr_refine [s]"] == "" and float(mean["lr-3dgs"]["render [s]"]) == 2.0
    assert rows[0]["train_lr [s]"] == "10.0" and rows[0]["render [s]"] == ""

    data = json.load(open(out_root / "results.json", encoding="utf-8"))
    m = {e["folder"]: e for e in data["mean"]}
    assert m["3dsr"]["PSNR"] == {"value": 26.25, "scenes": 2, "of": 2}
    assert m["3dsr"]["FID"] == {"value": 30.0, "scenes": 1, "of": 2}
    assert m["3dsr"]["MEt3R"] == UNAV
    assert "no Inception weights" in m["lr-3dgs"]["FID"]["unavailable"]
    assert m["per-view-sr"]["PSNR"] == {"unavailable": "method not run: no diffusion SR weights"}
    assert m["ours_300"]["PSNR"] == {"value": 30.0, "scenes": 1, "of": 1}
    assert data["scenes"] == ["fern", "room"] and data["higher_is_better"]["PSNR"] is True
    room3 = [r for r in data["rows"] if r["scene"] == "room" and r["folder"] == "3dsr"][0]
    assert room3["NIQE"]["unavailable"].startswith("not computed")


def test_markdown_table_shape(out_root):
    assert cli(out_root).returncode == 0
    md = open(out_root / "results.md", encoding="utf-8").read()
    lines = md.splitlines()
    start = lines.index(next(x for x in lines if x.startswith("| scene | method | views |")))
    table = []
    for x in lines[start:]:
        if not x.startswith("|"):
            break
        table.append(x)
    assert len(table) == 2 + 6 + 4  # header, rule, 6 scene rows, 4 mean rows
    assert {x.count("|") for x in table} == {3 + len(S.METRIC_KEYS) + 1}
    assert "PSNR ↑" in table[0] and "SSIM ↑" in table[0] and "LPIPS-vgg ↓" in table[0] and "FID ↓" in table[0]
    mean3 = next(x for x in table if x.startswith("| **mean** | 3DSR |"))
    cells = [c.strip() for c in mean3.strip("|").split("|")]
    assert cells[3] == "26.250" and cells[3 + S.METRIC_KEYS.index("FID")] == "30.000 (1/2)"
    assert cells[3 + S.METRIC_KEYS.index("MEt3R")] == "unavailable"
    assert "no MEt3R package" in md and "## Wall time per stage (s)" in md
    unav = [x for x in lines if x.startswith("- ")]
    assert len(unav) == len(set(unav)) == 5  # one line per reason, listing its metrics and places
    assert any(x.startswith("- " + ", ".join(S.METRIC_KEYS) + " (room/per-view-sr): method not run") for x in unav)
    assert "paper" not in md.lower()


def test_methods_option_restricts_and_orders(out_root):
    assert cli(out_root, "--methods", "3dsr", "lr-3dgs").returncode == 0
    rows = read_csv(out_root / "results.csv")
    assert [(r["scene"], r["folder"]) for r in rows] == [
        ("fern", "3dsr"), ("fern", "lr-3dgs"), ("room", "3dsr"), ("room", "lr-3dgs"),
        ("mean", "3dsr"), ("mean", "lr-3dgs")]
    proc = cli(out_root, "--methods", "bicubic")
    assert proc.returncode == 2 and "bicubic" in proc.stderr and "3dsr" in proc.stderr


def test_paper_numbers_are_marked(out_root):
    assert cli(out_root, "--paper").returncode == 0  # "llff" in the folder name picks the LLFF table
    md = open(out_root / "results.md", encoding="utf-8").read()
    assert "*3DSR (paper)*" in md and "*24.212*" in md and "*0.181*†" in md and "2508.04090" in md
    rows = read_csv(out_root / "results.csv")
    paper = [r for r in rows if r["scene"].startswith("paper")]
    assert [r["method"] for r in paper] == ["StableSR per view (paper)", "3DSR (paper)"]
    assert float(paper[1]["PSNR"]) == 24.212 and paper[1]["MV-warp"] == ""
    data = json.load(open(out_root / "results.json", encoding="utf-8"))
    assert data["paper"]["dataset"] == "llff"
    assert cli(out_root, "--paper", "--dataset", "mipnerf360").returncode == 0
    assert "*26.097*" in open(out_root / "results.md", encoding="utf-8").read()


def test_paper_dataset_detection():
    assert S.detect_dataset("/x/output/llff", ["a"]) == "llff"
    assert S.detect_dataset("/x/output/mipnerf360", ["a"]) == "mipnerf360"
    assert S.detect_dataset("/x/output/run1", ["fern", "trex"]) == "llff"
    assert S.detect_dataset("/x/output/run1", ["garden", "room"]) == "mipnerf360"
    assert S.detect_dataset("/x/output/run1", ["room"]) is None  # in both datasets
    assert S.detect_dataset("/x/output/run1", ["synthetic"]) is None


def test_bad_input(tmp_path):
    proc = cli(tmp_path / "nope")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    (tmp_path / "empty" / "a").mkdir(parents=True)
    proc = cli(tmp_path / "empty")
    assert proc.returncode == 2 and "results.json" in proc.stderr and proc.stderr.count("\n") == 1
    bad = tmp_path / "bad" / "a"
    bad.mkdir(parents=True)
    (bad / "results.json").write_text("{not json")
    proc = cli(tmp_path / "bad")
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr and proc.stderr.count("\n") == 1
    write_json(tmp_path / "syn" / "synthetic" / "results.json", {"3dsr": results(20.0, 0.5, 1.0)})
    proc = cli(tmp_path / "syn", "--paper")
    assert proc.returncode == 2 and "--dataset" in proc.stderr
    with pytest.raises(ThreeDSRError):
        S.summarize({"a": ({"3dsr": {}}, {})}, methods=["x"])
