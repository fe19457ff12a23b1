#!/usr/bin/env python
"""Run many scenes of the protocol: one after another, one per free GPU, or as a SLURM job array.

    python tools/launch.py --scenes data/nerf_llff_data output/llff fern horns -- --lr_res 8 --scale 4
    python tools/launch.py --launcher gpus --scenes data/nerf_llff_data output/llff -- --lr_res 8 --scale 4
    python tools/launch.py --launcher slurm --partition gpu --time 24:00:00 --gpus_per_job 1 --mem 64G \\
        --scenes data/nerf_llff_data output/llff --scenes data/mipnerf360 output/mipnerf360 -- --lr_res 8 --scale 4
    python tools/launch.py --launcher slurm --dry_run ...      # print the sbatch script and the array's tasks

Each scene is one `tools/run_scene.py -s DATA_ROOT/<scene> -m OUT_ROOT/<scene> <flags after -->` command,
which skips every stage whose result exists and resumes SR from its last denoising step, so running a
scene again (a retry, a requeued SLURM job, the same command later) continues where it stopped.
  local  the scenes one after another in this shell (output on the terminal and in the log)
  gpus   one worker per GPU (--gpus, default: every GPU with no process on it), each with its own
         CUDA_VISIBLE_DEVICES, taking scenes from a shared queue
  slurm  one job per scene as a job array (submitit), plus a summary job that runs after the array;
         a job hitting its time limit or preempted is requeued and continues (at most --max_requeues times)
Per scene: OUT_ROOT/<scene>/run.log (all output, every attempt) and OUT_ROOT/<scene>/launch.json (state,
attempts, the error line of a failure). A scene whose command fails is started again up to --retries
times, then recorded as failed; tools/summarize.py OUT_ROOT lists failed scenes with their reason.
When all scenes ended (local, gpus, slurm --wait, or slurm's summary job), each OUT_ROOT gets results.md.
"""
import datetime
import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from argparse import ArgumentParser, RawDescriptionHelpFormatter
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from utils.errors import ThreeDSRError  # noqa: E402
from utils.system_utils import atomic_write, run_cli  # noqa: E402

LAUNCHERS = ("local", "gpus", "slurm")
RUN_SCENE = os.path.join(ROOT, "tools", "run_scene.py")
STATUS = "launch.json"
LOG = "run.log"


# ------------------------------------------------------------------------------------------------
# arguments (shared with tools/run_scene.py --launcher)


def add_launcher_args(p, for_run_scene=False):
    """The launcher's flags, as an argument group of parser `p`."""
    g = p.add_argument_group("launcher" + (" (many scenes: tools/launch.py; here: this one scene)"
                                           if for_run_scene else ""))
    g.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local: in this shell; gpus: one scene per free GPU; slurm: a SLURM job per scene "
                        "(default local)")
    g.add_argument("--retries", type=int, metavar="N", default=1,
                   help="times a scene whose command failed is started again before it counts as failed "
                        "(default 1)")
    g.add_argument("--gpus", metavar="IDS", default="auto",
                   help="gpus launcher: GPU ids (or UUIDs) for the workers, comma-separated, one worker each; "
                        "auto = $CUDA_VISIBLE_DEVICES if set, else every GPU nvidia-smi shows without a "
                        "process (default auto)")
    g.add_argument("--partition", metavar="NAME", default=None,
                   help="slurm: partition (default: the cluster's default)")
    g.add_argument("--time", metavar="LIMIT", default="24:00:00",
                   help="slurm: time limit per job, minutes or [D-]HH:MM[:SS]; a job reaching it is requeued "
                        "and continues (default 24:00:00)")
    g.add_argument("--gpus_per_job", type=int, metavar="N", default=1,
                   help="slurm: GPUs per scene job (default 1; 0 for none)")
    g.add_argument("--cpus_per_job", type=int, metavar="N", default=8,
                   help="slurm: CPU cores per scene job (default 8)")
    g.add_argument("--mem", metavar="SIZE", default="64G",
                   help="slurm: memory per scene job, e.g. 64G or 32000M (default 64G)")
    g.add_argument("--parallel", type=int, metavar="N", default=64,
                   help="slurm: at most this many scene jobs of the array run at once (default 64)")
    g.add_argument("--sbatch", action="append", default=[], metavar="KEY[=VALUE]",
                   help="slurm: extra sbatch option, repeatable, e.g. --sbatch account=proj --sbatch qos=high "
                        "--sbatch exclusive (default none)")
    g.add_argument("--max_requeues", type=int, metavar="N", default=10,
                   help="slurm: times a scene job may be requeued (time limit, preemption, node failure) "
                        "before the scene counts as failed (default 10)")
    g.add_argument("--job_name", metavar="NAME", default="3dsr", help="slurm: job name (default 3dsr)")
    g.add_argument("--log_dir", metavar="DIR", default=None,
                   help="slurm: folder for submitit's job files and logs (default: <first OUT_ROOT>/slurm)")
    g.add_argument("--wait", action="store_true",
                   help="slurm: wait for the array and its summary, then print the table (default: return "
                        "after submitting)")
    g.add_argument("--dry_run", action="store_true",
                   help="print what would run or be submitted, change nothing (default off)")
    if not for_run_scene:
        g.add_argument("--runner", metavar="SCRIPT", default=RUN_SCENE,
                       help="the per-scene script; its flags: -s SOURCE -m MODEL, then the ones after -- "
                            "(default tools/run_scene.py)")
    return g


def launcher_flag_names():
    p = ArgumentParser(add_help=False)
    add_launcher_args(p)
    return {s for a in p._actions for s in a.option_strings}


def check_args(args):
    """One-line errors for launcher flags that cannot work; returns the time limit in minutes."""
    for name in ("retries", "max_requeues"):
        if getattr(args, name) < 0:
            raise ThreeDSRError(f"--{name} must be 0 or more (got {getattr(args, name)})")
    if args.parallel < 1 or args.cpus_per_job < 1 or args.gpus_per_job < 0:
        raise ThreeDSRError("--parallel and --cpus_per_job must be 1 or more, --gpus_per_job 0 or more")
    if not re.fullmatch(r"\d+(\.\d+)?[KMGT]?B?", args.mem, flags=re.I):
        raise ThreeDSRError(f"--mem {args.mem!r} is not a memory size; use e.g. 64G or 32000M")
    for item in args.sbatch:
        if not re.fullmatch(r"-{0,2}[A-Za-z][\w-]*(=.*)?", item):
            raise ThreeDSRError(f"--sbatch {item!r} is not KEY or KEY=VALUE (e.g. account=myproject)")
    return parse_minutes(args.time)


def parse_minutes(text):
    """SLURM time syntax (minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]) -> whole minutes (rounded up)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise ThreeDSRError(f"--time {text!r} is not a time limit; use minutes (e.g. 90) or [D-]HH:MM[:SS]")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        sec = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:
        sec = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS, as sbatch reads it
        sec = a * 60 + b
    else:
        sec = a * 60
    if sec <= 0:
        raise ThreeDSRError(f"--time {text!r} is zero")
    return -(-sec // 60)


# ------------------------------------------------------------------------------------------------
# scenes and their state


@dataclass
class SceneJob:
    name: str      # display name, also the model folder's name
    source: str    # scene folder (absolute)
    model: str     # model folder (absolute)
    argv: list = field(default_factory=list)  # runner flags after -s/-m

    def command(self, runner):
        return [sys.executable, "-u", runner, "-s", self.source, "-m", self.model] + list(self.argv)


def scene_jobs(groups, run_args, seeds=None):
    """SceneJobs of --scenes groups [DATA_ROOT, OUT_ROOT, scene...] (no scene: every folder of DATA_ROOT),
    one per scene and seed."""
    if seeds and any(a == "--seed" or a.startswith("--seed=") for a in run_args):
        raise ThreeDSRError("--seeds and a run_scene.py --seed after -- conflict; keep one")
    jobs = []
    for group in groups:
        if len(group) < 2:
            raise ThreeDSRError("--scenes needs DATA_ROOT OUT_ROOT [scene ...]")
        data, out, names = os.path.abspath(group[0]), os.path.abspath(group[1]), group[2:]
        if not names:
            if not os.path.isdir(data):
                raise ThreeDSRError(f"{group[0]} does not exist; pass the folder holding one folder per scene")
            names = sorted(n for n in os.listdir(data) if not n.startswith(".")
                           and os.path.isdir(os.path.join(data, n)))
            if not names:
                raise ThreeDSRError(f"{group[0]} holds no scene folder")
        for name in names:
            if not name or "/" in name or name in (".", ".."):
                raise ThreeDSRError(f"scene {name!r} is not a folder name under {group[0]}")
            for seed in seeds or [None]:
                model = name if seed is None else f"{name}_seed{seed}"
                extra = [] if seed is None else ["--seed", str(seed)]
                jobs.append(SceneJob(model, os.path.join(data, name), os.path.join(out, model),
                                     list(run_args) + extra))
    models = [j.model for j in jobs]
    dup = sorted({m for m in models if models.count(m) > 1})
    if dup:
        raise ThreeDSRError(f"two scenes would write to {dup[0]}; give each --scenes group its own OUT_ROOT")
    return jobs


def out_roots(jobs):
    return list(dict.fromkeys(os.path.dirname(j.model) for j in jobs))


def now():
    return datetime.datetime.now().isoformat(timespec="seconds")


def read_status(model):
    try:
        with open(os.path.join(model, STATUS)) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_status(model, **changes):
    data = read_status(model)
    data.update(changes, updated=now())
    os.makedirs(model, exist_ok=True)
    with atomic_write(os.path.join(model, STATUS), "w") as f:
        json.dump(data, f, indent=2)
    return data


def reset_status(job, launcher):
    """A new launch: fresh attempt counters (a scene that failed before gets its retries again)."""
    write_status(job.model, state="queued", launcher=launcher, scene=job.name, source=job.source,
                 starts=0, failures=0, requeues=0, reason=None, exit_code=None, job_id=None, host=None)


ERROR_LINE = re.compile(r"^(error:|\w*(Error|Exception)\b|Killed|Segmentation fault)")
STAGE_LINE = re.compile(r"^\[([^\]]+)\] ")
SCRIPTS = ("train.py", "render.py", "sr_refine.py", "metrics.py")


class OutputWatcher:
    """Keeps what a failure report needs: the stage running and the first error line since it began
    (the underlying cause; run_scene.py's own "stage ... failed" line comes after it)."""

    def __init__(self):
        self.stage, self.first_error, self.last_line = None, None, None

    def feed(self, line):
        line = line.strip()
        if not line:
            return
        self.last_line = line
        m = STAGE_LINE.match(line)
        if m and line[m.end():].startswith(SCRIPTS):  # run_scene.py's "[stage] script.py ..." header
            self.stage, self.first_error = m.group(1), None
        elif self.first_error is None and ERROR_LINE.match(line):
            self.first_error = line

    def reason(self, code):
        what = self.first_error or self.last_line or "no output"
        where = f"stage '{self.stage}': " if self.stage else ""
        return f"{where}{what} (exit {code})"


class SceneFailed(Exception):
    pass


class SceneInterrupted(Exception):
    pass


def _ignore_usr2():
    # SLURM signals every process of a job step; the scene's processes must not die of the USR2 that
    # submitit uses to checkpoint, so that checkpoint() stops them itself, in order.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class SceneTask:
    """Runs one scene's command until it succeeds, at most 1 + retries times; the callable that every
    launcher runs (SLURM: pickled by submitit, with checkpoint() for requeueing)."""

    def __init__(self, runner=RUN_SCENE, retries=1, max_requeues=10, echo=False, launcher="local", time_limit_s=None):
        self.runner, self.retries, self.max_requeues = runner, retries, max_requeues
        self.echo, self.launcher, self.time_limit_s = echo, launcher, time_limit_s
        self._proc = None

    def __getstate__(self):  # the running process stays behind when submitit pickles the task
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}

    def _arm_time_limit(self):
        """SLURM 22.05 sends --signal's warning only in a job's first run, not after a requeue: a timer of our
        own raises the same USR2 (submitit's checkpoint) a little after SLURM's would, before the limit."""
        if self.launcher != "slurm" or not self.time_limit_s or not os.environ.get("SLURM_JOB_ID"):
            return
        timer = threading.Timer(max(self.time_limit_s - 45, 1), os.kill, (os.getpid(), signal.SIGUSR2))
        timer.daemon = True
        timer.start()

    def __setstate__(self, state):
        self.__dict__.update(state, _proc=None)

    def __call__(self, job, env=None, prefix=""):
        status = read_status(job.model)
        starts = int(status.get("starts", 0)) + 1
        slurm_id = _slurm_job_id()
        write_status(job.model, state="running", starts=starts, job_id=slurm_id, host=socket.gethostname())
        if starts - 1 > self.max_requeues:
            reason = (f"started {starts} times without finishing (requeued, preempted or timed out more than "
                      f"--max_requeues {self.max_requeues}); last: {status.get('reason') or 'no error recorded'}")
            write_status(job.model, state="failed", reason=reason)
            self._log(job, f"=== launch: giving up: {reason}")
            raise SceneFailed(f"{job.name}: {reason}")
        failures = int(status.get("failures", 0))
        self._arm_time_limit()
        while True:
            restart = os.environ.get("SLURM_RESTART_COUNT")
            self._log(job, f"=== launch: {job.name} attempt {starts}.{failures + 1} on {socket.gethostname()}"
                           + (f", SLURM job {slurm_id}" if slurm_id else "")
                           + (f", SLURM restart {restart}" if restart not in (None, "0") else "")
                           + (f", CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}"
                              if env and "CUDA_VISIBLE_DEVICES" in env else "") + f" ({now()})")
            try:
                code, watcher = self._run(job, env, prefix)
            except KeyboardInterrupt:
                write_status(job.model, state="interrupted", reason="interrupted (Ctrl-C)")
                raise
            if code == 0:
                write_status(job.model, state="done", reason=None, exit_code=0)
                return {"scene": job.name, "state": "done"}
            if code < 0 or code in (130, 137, 143):  # killed by a signal: Ctrl-C, scancel, scontrol requeue
                write_status(job.model, state="interrupted", exit_code=code,
                             reason=f"interrupted by a signal (exit {code})")
                self._log(job, f"=== launch: {job.name} interrupted (exit {code}); its next run continues")
                raise SceneInterrupted(f"{job.name}: interrupted (exit {code})")
            failures += 1
            reason = watcher.reason(code)
            if failures > self.retries:
                write_status(job.model, state="failed", failures=failures, exit_code=code, reason=reason)
                self._log(job, f"=== launch: {job.name} failed {failures} time(s), giving up: {reason}")
                raise SceneFailed(f"{job.name}: {reason}")
            write_status(job.model, state="retrying", failures=failures, exit_code=code, reason=reason)
            self._log(job, f"=== launch: {job.name} failed ({reason}); retry {failures} of {self.retries}")

    def checkpoint(self, job, env=None, prefix=""):
        """submitit calls this on SLURM's warning signal (time limit or preemption): stop the scene's
        processes and requeue the same task, which then continues from the finished stages."""
        from submitit.helpers import DelayedSubmission
        self._stop()
        status = read_status(job.model)
        requeues = int(status.get("requeues", 0)) + 1
        if requeues > self.max_requeues:
            reason = (f"timed out or preempted {requeues} times (--max_requeues {self.max_requeues}); raise "
                      f"--time")
            write_status(job.model, state="failed", requeues=requeues, reason=reason)
            self._log(job, f"=== launch: not requeued: {reason}")
            return None  # submitit then ends the job
        write_status(job.model, state="requeued", requeues=requeues,
                     reason="requeued after SLURM's time-limit / preemption signal")
        self._log(job, f"=== launch: {job.name} checkpointed, requeue {requeues} of {self.max_requeues} "
                       f"({now()})")
        return DelayedSubmission(self, job, env, prefix)

    def _log(self, job, line):
        os.makedirs(job.model, exist_ok=True)
        with open(os.path.join(job.model, LOG), "a") as f:
            f.write(line + "\n")
        if self.echo:
            print(line, flush=True)

    def _run(self, job, env, prefix):
        env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        in_slurm = self.launcher == "slurm"
        watcher = OutputWatcher()
        with open(os.path.join(job.model, LOG), "a") as log:
            self._proc = subprocess.Popen(
                job.command(self.runner), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, errors="replace", bufsize=1, preexec_fn=_ignore_usr2 if in_slurm else None)
            try:
                for line in self._proc.stdout:
                    log.write(line)
                    log.flush()
                    watcher.feed(line)
                    if self.echo:
                        sys.stdout.write(prefix + line)
                        sys.stdout.flush()
                code = self._proc.wait()
            except BaseException:  # Ctrl-C, submitit's exit after requeue: never leave the scene running
                self._stop()
                raise
            finally:
                self._proc.stdout.close()
            self._proc = None
        return code, watcher

    def _stop(self, grace=20):
        """SIGTERM the scene's process and its children (run_scene.py -> sr_refine.py), SIGKILL after `grace` s."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        pids = _descendants(proc.pid) + [proc.pid]
        _signal_all(pids, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        _signal_all(pids, signal.SIGKILL)
        proc.wait()


def _descendants(pid):
    """Process ids below `pid` (Linux /proc); found by parent links so it works whatever the process groups."""
    children = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal_all(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _slurm_job_id():
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


# ------------------------------------------------------------------------------------------------
# summaries


def summarize_roots(roots):
    """tools/summarize.py on each OUT_ROOT (its table on stdout); returns True when all succeeded."""
    ok = True
    for root in roots:
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "summarize.py"), root], cwd=ROOT)
        ok = ok and proc.returncode == 0
    return ok


def report(jobs):
    """Failed scenes with their reason; returns the failed jobs."""
    failed = []
    for job in jobs:
        st = read_status(job.model)
        if st.get("state") != "done":
            failed.append(job)
            why = st.get("reason") or f"state {st.get('state', 'unknown')}"
            print(f"failed: {job.name}: {why} (log: {os.path.join(job.model, LOG)})")
    if failed:
        print(f"failed scenes: {' '.join(j.name for j in failed)} (see their run.log; rerun to continue)")
    return failed


def _missing(jobs, launcher):
    """Scenes whose folder does not exist are recorded as failed and not run; returns the others."""
    todo = []
    for job in jobs:
        if os.path.isdir(job.source):
            todo.append(job)
            continue
        reason = f"missing: {job.source} does not exist (see the download script)"
        print(f"[{job.name}] {reason}")
        reset_status(job, launcher)
        write_status(job.model, state="failed", reason=reason)
    return todo


# ------------------------------------------------------------------------------------------------
# launchers


def run_local(jobs, args):
    task = SceneTask(args.runner, args.retries, args.max_requeues, echo=True, launcher="local")
    for job in _missing(jobs, "local"):
        reset_status(job, "local")
        print(f"=== {job.name} -> {job.model} (log: {os.path.join(job.model, LOG)})", flush=True)
        try:
            task(job)
        except SceneFailed:
            pass
        except (SceneInterrupted, KeyboardInterrupt):
            print("\ninterrupted: rerun the same command to continue", flush=True)
            return 130
    summarize_roots(out_roots(jobs))
    return 1 if report(jobs) else 0


def detect_gpus(spec):
    """GPU ids for --gpus: the list given, or $CUDA_VISIBLE_DEVICES, or nvidia-smi's GPUs without a process."""
    if spec != "auto":
        ids = [g.strip() for g in spec.split(",")]
        if not all(ids):
            raise ThreeDSRError(f"--gpus {spec!r}: give GPU ids separated by commas, e.g. 0,1,2,3")
        return ids
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible:
        return [g.strip() for g in visible.split(",") if g.strip()]
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=60, check=True).stdout
        apps = subprocess.run(["nvidia-smi", "--query-compute-apps=gpu_uuid", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        raise ThreeDSRError("--gpus auto: nvidia-smi found no GPU; pass --gpus 0,1,... or use --launcher local "
                            "or slurm") from None
    busy = {line.strip() for line in apps.splitlines() if line.strip()}
    rows = [[c.strip() for c in line.split(",")] for line in gpus.splitlines() if line.strip()]
    free = [idx for idx, uuid in rows if uuid not in busy]
    if not free:
        raise ThreeDSRError(f"--gpus auto: all {len(rows)} GPU(s) have processes on them; pass --gpus to use "
                            f"them anyway")
    return free


def run_gpus(jobs, args):
    gpus = detect_gpus(args.gpus)
    todo = _missing(jobs, "gpus")
    work = queue.Queue()
    for job in todo:
        reset_status(job, "gpus")
        work.put(job)
    print(f"{len(todo)} scene(s) on {len(gpus)} worker(s), GPUs {','.join(gpus)}; logs: OUT_ROOT/<scene>/{LOG}",
          flush=True)
    stop = threading.Event()

    def worker(gpu):
        task = SceneTask(args.runner, args.retries, args.max_requeues, echo=False, launcher="gpus")
        while not stop.is_set():
            try:
                job = work.get_nowait()
            except queue.Empty:
                return
            print(f"[gpu {gpu}] {job.name}: started (log: {os.path.join(job.model, LOG)})", flush=True)
            t0 = time.time()
            try:
                task(job, env={"CUDA_VISIBLE_DEVICES": gpu})
                print(f"[gpu {gpu}] {job.name}: done ({time.time() - t0:.0f} s)", flush=True)
            except SceneFailed as exc:
                print(f"[gpu {gpu}] failed: {exc}", flush=True)
            except SceneInterrupted:
                stop.set()
            except Exception as exc:  # a bug in one worker must not hang the others
                print(f"[gpu {gpu}] {job.name}: {type(exc).__name__}: {exc}", flush=True)

    threads = [threading.Thread(target=worker, args=(g,), daemon=True) for g in gpus]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.2)
    except KeyboardInterrupt:  # the scenes' processes got the same Ctrl-C
        stop.set()
        for t in threads:
            t.join(60)
    if stop.is_set():
        print("\ninterrupted: rerun the same command to continue", flush=True)
        return 130
    summarize_roots(out_roots(jobs))
    return 1 if report(jobs) else 0


def _sbatch_extra(args):
    """--sbatch KEY[=VALUE] items -> {key: value or True} (sbatch's dashes as underscores)."""
    extra = {}
    for item in args.sbatch:
        key, sep, value = item.lstrip("-").partition("=")
        extra[key.replace("-", "_")] = value if sep else True
    return extra


def _setup_lines():
    # the pickled task is tools.launch.SceneTask: importable from the repository in every job
    return [f"cd {shlex.quote(ROOT)}", f"export PYTHONPATH={shlex.quote(ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}"]


def slurm_parameters(args, minutes):
    """submitit SlurmExecutor parameters of the scene jobs."""
    extra = {"requeue": True, **_sbatch_extra(args)}  # requeue: even where the cluster's JobRequeue=0
    params = {"job_name": args.job_name, "time": minutes, "cpus_per_task": args.cpus_per_job, "mem": args.mem,
              "array_parallelism": args.parallel, "stderr_to_stdout": True, "additional_parameters": extra,
              "setup": _setup_lines()}
    if args.partition:
        params["partition"] = args.partition
    if args.gpus_per_job:
        params["gpus_per_node"] = args.gpus_per_job
    return params


def summary_parameters(args, dependency):
    """The summary job: small, after the array; keeps only the --sbatch options that say where it may run."""
    params = {"job_name": f"{args.job_name}-summary", "time": 30, "cpus_per_task": 1, "mem": "4G",
              "stderr_to_stdout": True, "dependency": dependency, "setup": _setup_lines()}
    extra = {k: v for k, v in _sbatch_extra(args).items() if k in ("account", "qos", "clusters", "reservation")}
    if extra:
        params["additional_parameters"] = extra
    if args.partition:
        params["partition"] = args.partition
    return params


def _import_submitit():
    try:
        import submitit
        from submitit.slurm import slurm as submitit_slurm
    except ImportError:
        raise ThreeDSRError("--launcher slurm needs submitit: pip install submitit") from None
    return submitit, submitit_slurm


def run_slurm(jobs, args, minutes):
    submitit, submitit_slurm = _import_submitit()
    log_dir = os.path.abspath(args.log_dir or os.path.join(out_roots(jobs)[0], "slurm"))
    params = slurm_parameters(args, minutes)
    python = shlex.quote(sys.executable)
    if args.dry_run:
        todo = [j for j in jobs if os.path.isdir(j.source)]
        for job in jobs:
            if job not in todo:
                print(f"[{job.name}] missing: {job.source} does not exist (would be recorded as failed)")
        # the script submitit writes for the array (its own function, so this is what sbatch would get)
        command = f"{python} -u -m submitit.core._submit {shlex.quote(log_dir)}"
        array = submitit_slurm._make_sbatch_string(command=command, folder=log_dir, map_count=max(len(todo), 1),
                                                  **params)
        print(f"# would submit a job array of {len(todo)} scene job(s) with this sbatch script:")
        print(array)
        print(f"# array tasks (each runs tools/launch.py's SceneTask: the command below, up to "
              f"{1 + args.retries} time(s), requeued at most {args.max_requeues} time(s)):")
        for i, job in enumerate(todo):
            print(f"#   task {i:>3}  {job.name:<20} {shlex.join(job.command(args.runner))}")
        print(f"# then a summary job (afterany:<array id>): tools/summarize.py "
              f"{' '.join(shlex.quote(r) for r in out_roots(jobs))}")
        print(f"# logs: <OUT_ROOT>/<scene>/{LOG}, {log_dir}/<array id>_<task>_0_log.out")
        return 0
    todo = _missing(jobs, "slurm")
    if not todo:
        return 1 if report(jobs) else 0
    for job in todo:
        reset_status(job, "slurm")
    task = SceneTask(args.runner, args.retries, args.max_requeues, echo=False, launcher="slurm",
                     time_limit_s=minutes * 60)
    try:
        executor = submitit.SlurmExecutor(folder=log_dir, max_num_timeout=args.max_requeues)
        executor.update_parameters(**params)
        submitted = executor.map_array(task, todo)
        array_id = submitted[0].job_id.split("_")[0]
        summary = submitit.SlurmExecutor(folder=log_dir, max_num_timeout=0)
        summary.update_parameters(**summary_parameters(args, f"afterany:{array_id}"))
        summary_job = summary.submit(summarize_roots, out_roots(jobs))
    except RuntimeError as exc:  # submitit: no srun, or sbatch refused (first line says why)
        raise ThreeDSRError(f"SLURM submission failed: {str(exc).strip().splitlines()[0]}") from None
    for job, sj in zip(todo, submitted):  # the job records its own id in launch.json when it starts
        print(f"submitted {sj.job_id}: {job.name} (log: {os.path.join(job.model, LOG)})")
    print(f"array {array_id}: {len(todo)} scene job(s); summary job {summary_job.job_id} runs after it and "
          f"writes {', '.join(os.path.join(r, 'results.md') for r in out_roots(jobs))}")
    print(f"watch: squeue -j {array_id},{summary_job.job_id}   submitit logs: {log_dir}")
    if not args.wait:
        return 0
    wait_slurm([array_id, summary_job.job_id])
    for root in out_roots(jobs):
        path = os.path.join(root, "results.md")
        if os.path.isfile(path):
            print(open(path, encoding="utf-8").read(), end="")
    return 1 if report(jobs) else 0


def wait_slurm(job_ids, poll=10):
    """Until squeue no longer lists the jobs (a requeued job stays listed, pending)."""
    while True:
        proc = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T"], capture_output=True,
                              text=True)
        if proc.returncode == 0 and not proc.stdout.strip():
            return
        if proc.returncode != 0 and "Invalid job id" in proc.stderr:  # all purged already
            return
        time.sleep(poll)


def launch(jobs, args):
    """Run `jobs` with args.launcher; the exit status: 0 all done (or submitted), 1 some failed, 130 Ctrl-C."""
    minutes = check_args(args)
    if args.dry_run and args.launcher != "slurm":
        if args.launcher == "gpus":
            gpus = detect_gpus(args.gpus)
            print(f"# {len(gpus)} worker(s), CUDA_VISIBLE_DEVICES={' / '.join(gpus)}, taking from this queue:")
        for job in jobs:
            print(f"{shlex.join(job.command(args.runner))}   # log {os.path.join(job.model, LOG)}")
        return 0
    if args.launcher == "local":
        return run_local(jobs, args)
    if args.launcher == "gpus":
        return run_gpus(jobs, args)
    return run_slurm(jobs, args, minutes)


def split_run_scene_argv(argv):
    """run_scene.py's argv without the launcher flags (for the one scene job of run_scene.py --launcher)."""
    p = ArgumentParser(add_help=False, allow_abbrev=False)
    add_launcher_args(p, for_run_scene=True)
    _, rest = p.parse_known_args(argv)
    return rest


def launch_run_scene(args, argv):
    """tools/run_scene.py --launcher gpus|slurm: this one scene as a job of that launcher."""
    rest = split_run_scene_argv(argv)
    p = ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("-s", "--source_path")
    p.add_argument("-m", "--model_path")
    _, flags = p.parse_known_args(rest)
    model = os.path.abspath(args.model_path)
    job = SceneJob(os.path.basename(os.path.normpath(model)), os.path.abspath(args.source_path), model, flags)
    args.runner = RUN_SCENE
    return launch([job], args)


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                       formatter_class=RawDescriptionHelpFormatter, allow_abbrev=False,
                       usage="%(prog)s --scenes DATA_ROOT OUT_ROOT [scene ...] [--scenes ...] [options] "
                             "[-- run_scene.py flags]")
    p.add_argument("--scenes", nargs="+", action="append", required=True, metavar="ARG",
                   help="DATA_ROOT OUT_ROOT [scene ...]: scene folders DATA_ROOT/<scene> -> models "
                        "OUT_ROOT/<scene>; no scene names: every folder of DATA_ROOT; repeat for several "
                        "datasets in one launch (required, no default)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                   help="run each scene once per seed (run_scene.py --seed), as OUT_ROOT/<scene>_seed<k> "
                        "(default: one run, run_scene.py's seed)")
    add_launcher_args(p)
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    run_args = []
    if "--" in argv:
        i = argv.index("--")
        argv, run_args = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    jobs = scene_jobs(args.scenes, run_args, args.seeds)
    if not os.path.isfile(args.runner):
        raise ThreeDSRError(f"--runner {args.runner} does not exist")
    args.runner = os.path.abspath(args.runner)
    return launch(jobs, args)


if __name__ == "__main__":
    # submitit pickles SceneTask by reference: make it tools.launch.SceneTask, not __main__.SceneTask
    from tools import launch as _self
    sys.exit(run_cli(_self.main))
