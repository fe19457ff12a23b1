"""tools/launch.py with a stub per-scene script (no training, no SLURM): the gpus worker pool (fake GPU ids
on the CPU), local runs, retry limits and failure reasons in the summary, SLURM requeue bookkeeping and the
--dry_run of a 17-scene array."""
import json
import os
import pickle
import sys
import textwrap

import pytest
from cli import run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tools import launch as L  # noqa: E402
from utils.errors import ThreeDSRError  # noqa: E402

# Stands in for tools/run_scene.py: same -s/-m interface, run_scene-like output, a results.json for the summary.
STUB = textwrap.dedent('''
    import argparse, json, os, signal, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("-s"); p.add_argument("-m"); p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fail_times", type=int, default=0); p.add_argument("--fail_scene", default=None)
    p.add_argument("--barrier", default=None); p.add_argument("--die", action="store_true")
    a = p.parse_args()
    name = os.path.basename(a.m)
    counter = os.path.join(a.m, "calls")
    n = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
    open(counter, "w").write(str(n))
    print(f"[train] train.py -s {a.s}", flush=True)
    with open(os.path.join(a.m, f"env{n}.json"), "w") as f:
        json.dump({"cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}, f)
    if a.barrier:  # the first two scenes wait for each other: proof that two workers run at once
        open(os.path.join(a.barrier, name), "w").close()
        t0 = time.time()
        while len(os.listdir(a.barrier)) < 2:
            if time.time() - t0 > 60:
                print("error: barrier timeout", flush=True); sys.exit(3)
            time.sleep(0.02)
    if n <= a.fail_times and a.fail_scene in (None, name):
        print("[sr 3dsr] sr_refine.py -m x --mode 3dsr", flush=True)
        print("error: CUDA out of memory (stub)", file=sys.stderr, flush=True)
        print("error: stage 'sr 3dsr' failed (exit 2); rerun the same command", file=sys.stderr, flush=True)
        sys.exit(2)
    if a.die:
        os.kill(os.getpid(), signal.SIGTERM)
    with open(os.path.join(a.m, "results.json"), "w") as f:
        json.dump({"stub": {"views": 1, "PSNR": 20.0 + a.seed}}, f)
    print(f"scene done: {a.m}", flush=True)
''')


@pytest.fixture
def stub(tmp_path):
    path = tmp_path / "stub_scene.py"
    path.write_text(STUB)
    return str(path)


def make_data(root, names):
    for n in names:
        os.makedirs(os.path.join(root, n), exist_ok=True)
    return str(root)


def status(model):
    with open(os.path.join(model, "launch.json")) as f:
        return json.load(f)


def launch(args, check=True):
    return run_script(["tools/launch.py"] + args, check=check, timeout=300)


def test_gpus_one_scene_per_worker_each_with_its_own_device(stub, tmp_path):
    data = make_data(tmp_path / "data", ["a", "b", "c", "d"])
    out, barrier = tmp_path / "out", tmp_path / "barrier"
    barrier.mkdir()
    proc = launch(["--launcher", "gpus", "--gpus", "3,7", "--runner", stub, "--scenes", data, str(out),
                   "--", "--barrier", str(barrier)])
    assert "4 scene(s) on 2 worker(s), GPUs 3,7" in proc.stdout
    seen = []
    for name in "abcd":
        model = str(out / name)
        assert status(model)["state"] == "done" and status(model)["starts"] == 1
        assert open(os.path.join(model, "calls")).read() == "1"  # each scene ran exactly once
        seen.append(json.load(open(os.path.join(model, "env1.json")))["cuda"])
        assert "scene done" in open(os.path.join(model, "run.log")).read()
    assert set(seen) == {"3", "7"}  # each worker sees one device of its own, and both worked
    assert sorted(os.listdir(barrier))[:2] and len(os.listdir(barrier)) == 4
    for gpu in ("3", "7"):
        assert f"[gpu {gpu}]" in proc.stdout
    table = open(out / "results.md").read()  # gathered into one table
    assert all(f"| {name} |" in table for name in "abcd")


def test_local_runs_in_order_and_reports_missing_scenes(stub, tmp_path):
    data = make_data(tmp_path / "data", ["x", "y"])
    out = tmp_path / "out"
    proc = launch(["--runner", stub, "--scenes", data, str(out), "x", "nope", "y"], check=False)
    assert proc.returncode == 1
    assert proc.stdout.index("=== x") < proc.stdout.index("=== y")
    assert "scene done" in proc.stdout  # local: output on the terminal as today
    assert "[nope] missing:" in proc.stdout and "failed scenes: nope" in proc.stdout
    assert status(str(out / "nope"))["state"] == "failed"
    assert json.load(open(os.path.join(out, "x", "env1.json")))["cuda"] == os.environ.get("CUDA_VISIBLE_DEVICES")
    assert "Scenes not finished" in open(out / "results.md").read()


def test_failing_scene_stops_after_retries_and_summary_says_why(stub, tmp_path):
    data = make_data(tmp_path / "data", ["good", "bad"])
    out = tmp_path / "out"
    proc = launch(["--launcher", "gpus", "--gpus", "0", "--retries", "2", "--runner", stub,
                   "--scenes", data, str(out), "--", "--fail_times", "99", "--fail_scene", "bad"], check=False)
    assert proc.returncode == 1
    st = status(str(out / "bad"))
    assert st["state"] == "failed" and st["failures"] == 3  # first run + 2 retries, then no more
    assert open(out / "bad" / "calls").read() == "3"
    # the first error line of the failing stage, not run_scene.py's "stage failed" wrapper
    assert st["reason"] == "stage 'sr 3dsr': error: CUDA out of memory (stub) (exit 2)"
    assert status(str(out / "good"))["state"] == "done"
    table = open(out / "results.md").read()
    assert "| good |" in table and "- bad (failed): stage 'sr 3dsr': error: CUDA out of memory" in table
    summary = json.load(open(out / "results.json"))
    assert [u["scene"] for u in summary["not_finished"]] == ["bad"]
    assert "failed scenes: bad" in proc.stdout


def test_transient_failure_is_retried_and_continues(stub, tmp_path):
    data = make_data(tmp_path / "data", ["s"])
    out = tmp_path / "out"
    launch(["--runner", stub, "--retries", "1", "--scenes", data, str(out), "--", "--fail_times", "1"])
    st = status(str(out / "s"))
    assert st["state"] == "done" and st["failures"] == 1
    log = open(out / "s" / "run.log").read()
    assert "retry 1 of 1" in log and "attempt 1.2" in log


def test_seeds_and_killed_scene(stub, tmp_path):
    data = make_data(tmp_path / "data", ["s"])
    out = tmp_path / "out"
    launch(["--runner", stub, "--seeds", "0", "1", "--scenes", data, str(out)])
    res = {n: json.load(open(out / n / "results.json"))["stub"]["PSNR"] for n in ("s_seed0", "s_seed1")}
    assert res == {"s_seed0": 20.0, "s_seed1": 21.0}
    # a scene killed by a signal is interrupted (no retry, not "failed"); its next run continues
    proc = launch(["--runner", stub, "--scenes", data, str(tmp_path / "o2"), "--", "--die"], check=False)
    assert proc.returncode == 130 and "interrupted" in proc.stdout
    assert status(str(tmp_path / "o2" / "s"))["state"] == "interrupted"


def test_slurm_dry_run_of_17_scenes(tmp_path):
    pytest.importorskip("submitit")
    llff = ["fern", "flower", "fortress", "horns", "leaves", "orchids", "room", "trex"]
    m360 = ["bicycle", "flowers", "garden", "stump", "treehill", "room", "counter", "kitchen", "bonsai"]
    d1, d2 = make_data(tmp_path / "llff", llff), make_data(tmp_path / "360", m360)
    out = tmp_path / "out"
    proc = launch(["--launcher", "slurm", "--dry_run", "--partition", "gpu", "--time", "1-12:00:00",
                   "--gpus_per_job", "1", "--mem", "64G", "--parallel", "5", "--sbatch", "account=proj",
                   "--sbatch", "exclusive", "--scenes", d1, str(out / "llff"), "--scenes", d2, str(out / "m360"),
                   "--", "--lr_res", "8", "--scale", "4"])
    text = proc.stdout
    for line in ("#SBATCH --array=0-16%5", "#SBATCH --partition=gpu", "#SBATCH --time=2160",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --mem=64G", "#SBATCH --account=proj", "#SBATCH --exclusive",
                 "#SBATCH --requeue", "#SBATCH --signal=USR2@90", "submitit.core._submit"):
        assert line in text, line
    tasks = [ln for ln in text.splitlines() if ln.startswith("#   task")]
    assert len(tasks) == 17 and "run_scene.py -s" in tasks[0] and tasks[16].split()[3] == "treehill"
    assert str(out / "m360" / "room") in text and str(out / "llff" / "room") in text
    assert not out.exists()  # a dry run writes nothing


def test_run_scene_launcher_option(tmp_path):
    pytest.importorskip("submitit")
    (tmp_path / "fern").mkdir()
    proc = run_script(["tools/run_scene.py", "-s", str(tmp_path / "fern"), "-m", str(tmp_path / "o" / "fern"),
                       "--launcher", "slurm", "--dry_run", "--partition", "p", "--train_iters", "7"])
    tasks = [ln for ln in proc.stdout.splitlines() if ln.startswith("#   task")]
    assert len(tasks) == 1 and tasks[0].endswith(f"-m {tmp_path / 'o' / 'fern'} --train_iters 7")
    assert "--launcher" not in tasks[0] and "#SBATCH --partition=p" in proc.stdout
    proc = run_script(["tools/run_scene.py", "-s", "d/fern", "-m", "o/fern", "--launcher", "gpus", "--gpus", "4",
                       "--dry_run"])
    assert "CUDA_VISIBLE_DEVICES=4" in proc.stdout and "run_scene.py -s" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--time", "soon"], "--time 'soon' is not a time limit"),
    (["--launcher", "gpus", "--gpus", "0,,1"], "--gpus '0,,1'"),
    (["--mem", "lots"], "--mem 'lots' is not a memory size"),
    (["--sbatch", "=x"], "--sbatch '=x'"),
    (["--retries", "-1"], "--retries must be 0 or more"),
])
def test_bad_input_one_line_error(tmp_path, args, message):
    data = make_data(tmp_path / "data", ["a"])
    proc = launch(["--dry_run", "--scenes", data, str(tmp_path / "o")] + args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), proc.stderr


def test_two_scenes_into_one_folder_is_an_error(tmp_path):
    d1, d2 = make_data(tmp_path / "d1", ["room"]), make_data(tmp_path / "d2", ["room"])
    with pytest.raises(ThreeDSRError, match="two scenes would write to"):
        L.scene_jobs([[d1, str(tmp_path / "o"), "room"], [d2, str(tmp_path / "o"), "room"]], [])


def test_parse_minutes():
    assert [L.parse_minutes(t) for t in ("90", "1:30", "02:00:00", "1-00:00:00", "2-3", "0:0:1")] == \
        [90, 2, 120, 1440, 2 * 1440 + 180, 1]


def test_requeue_bookkeeping_stops_a_scene_that_never_finishes(tmp_path):
    """checkpoint() (submitit's hook on SLURM's time-limit / preemption signal) requeues the same task until
    --max_requeues; a scene restarted more often than that (e.g. scontrol requeue, node failures) fails."""
    pytest.importorskip("submitit")
    job = L.SceneJob("s", str(tmp_path / "src"), str(tmp_path / "s"), [])
    L.reset_status(job, "slurm")
    task = L.SceneTask(retries=1, max_requeues=2, launcher="slurm")
    for k in (1, 2):
        delayed = task.checkpoint(job)
        assert delayed is not None and delayed.args[0] == job and status(job.model)["requeues"] == k
    assert task.checkpoint(job) is None and status(job.model)["state"] == "failed"
    # a task as submitit stores it: picklable, without the running process
    clone = pickle.loads(pickle.dumps(delayed.function))
    assert isinstance(clone, L.SceneTask) and clone._proc is None and clone.max_requeues == 2
    L.reset_status(job, "slurm")
    L.write_status(job.model, starts=3)
    with pytest.raises(L.SceneFailed, match="started 4 times without finishing"):
        task(job)
    assert status(job.model)["state"] == "failed"


def test_dataset_script_passes_scenes_and_launcher_flags(tmp_path):
    pytest.importorskip("submitit")
    data = make_data(tmp_path / "llff", ["fern", "horns"])
    import subprocess
    proc = subprocess.run(["bash", "scripts/llff.sh", data, str(tmp_path / "out"), "horns", "--launcher", "slurm",
                           "--dry_run", "--partition", "big", "--", "--train_iters", "5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tasks = [ln for ln in proc.stdout.splitlines() if ln.startswith("#   task")]
    assert len(tasks) == 1 and " horns " in tasks[0]
    assert tasks[0].endswith("--lr_res 8 --scale 4 --train_iters 5") and "#SBATCH --partition=big" in proc.stdout


def test_slurm_task_stops_and_checkpoints_on_its_own_time_limit_timer(tmp_path, monkeypatch):
    """SLURM may not re-send --signal's warning after a requeue: the task's own timer raises submitit's USR2
    before the limit; the scene's processes ignore USR2 and are stopped by checkpoint(), in order."""
    pytest.importorskip("submitit")
    import signal
    import time
    stub = tmp_path / "sleepy.py"
    stub.write_text("import os, sys, time\nopen(os.path.join(sys.argv[4], 'pid'), 'w').write(str(os.getpid()))\n"
                    "print('[sr 3dsr] sr_refine.py sleeping', flush=True)\ntime.sleep(120)\n")
    job = L.SceneJob("s", str(tmp_path), str(tmp_path / "s"), [])
    L.reset_status(job, "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    task = L.SceneTask(str(stub), retries=0, max_requeues=3, launcher="slurm", time_limit_s=46)  # timer: 1 s

    class Requeued(Exception):
        pass

    def submitit_like(signum, frame):  # what submitit's handler does: checkpoint, then leave the job
        assert task.checkpoint(job) is not None
        raise Requeued

    old = signal.signal(signal.SIGUSR2, submitit_like)
    t0 = time.time()
    try:
        with pytest.raises(Requeued):
            task(job)
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert time.time() - t0 < 30
    pid = int(open(os.path.join(job.model, "pid")).read())
    with pytest.raises(ProcessLookupError):  # stopped by checkpoint(), not left running
        os.kill(pid, 0)
    st = status(job.model)
    assert st["state"] == "requeued" and st["requeues"] == 1 and st["starts"] == 1
