#!/usr/bin/env bash
# Real-SLURM test of tools/launch.py. Starts a one-node cluster on this machine (munge, slurmctld + slurmd on
# localhost, one CPU partition "ci"; proctrack/linuxproc, task/none: no cgroups needed, so it runs in a
# container), runs the quick embedded-scene protocol for two seeds once locally (--launcher local) and once
# as a SLURM job array (--launcher slurm), requeues the seed-0 job with `scontrol requeue` while its 3DSR
# stage is between denoising steps, and checks: the requeue happened and the job resumed SR from its last
# step, no stage ran twice to completion, both scenes finished, and results (every metric of every method,
# the final 3DSR PLY, the summary table) equal the local run's.
# Usage: bash scripts/ci_slurm.sh [WORK_DIR]   (default /tmp/3dsr-ci-slurm; as root: installs Debian's
#   slurm-wlm and munge with apt-get when missing; needs the project's environment: bash scripts/setup.sh)
#   CI_SLURM_FULL=1  the quick protocol's own schedules (scripts/synthetic.sh --quick; ~4x longer);
#                    default: the same stages and 4 SR steps with shorter fits, so it fits a CI time limit
#   CI_SLURM_KEEP=1  leave the cluster running at the end (stop it: kill the pids in WORK_DIR/*.pid)
# Exit 0 when every check passes; each check prints PASS or FAIL.
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=$(mkdir -p "${1:-/tmp/3dsr-ci-slurm}" && cd "${1:-/tmp/3dsr-ci-slurm}" && pwd)
REPO=$(pwd)
say() { echo "[ci_slurm $(date +%T)] $*"; }
die() { echo "[ci_slurm] error: $*" >&2; exit 2; }

# ---- packages and environment
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are missing; run as root or: sudo apt-get install slurm-wlm munge"
  say "installing slurm-wlm and munge (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null || \
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; } || \
    die "apt-get install slurm-wlm munge failed"
fi
[ "$(id -u)" = 0 ] || die "run as root: slurmd must run as root to start jobs"
. scripts/lib/pyenv.sh
threedsr_activate || die "no project environment; run bash scripts/setup.sh first"
python -c "import submitit" 2>/dev/null || die "submitit is missing: pip install submitit"

# ---- a one-node cluster
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
mkdir -p "$WORK/state" "$WORK/spool" /run/munge
export SLURM_CONF=$WORK/slurm.conf
cat > "$SLURM_CONF" <<EOF
ClusterName=ci3dsr
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after cred_expire seconds (default 120)
AuthInfo=cred_expire=10
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
# no cgroup plugins: they need a writable cgroup hierarchy, which containers often lack
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
KillWait=10
MinJobAge=3600
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
STARTED_MUNGE=0
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  [ -s /etc/munge/munge.key ] || { command -v mungekey >/dev/null && mungekey -c -f >/dev/null; } || \
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  munged --force --pid-file "$WORK/munged.pid" 2>/dev/null || munged --force || die "munged does not start"
  STARTED_MUNGE=1
fi
cleanup() {
  [ "${CI_SLURM_KEEP:-0}" = 1 ] && { say "cluster left running (SLURM_CONF=$SLURM_CONF)"; return; }
  for f in slurmd slurmctld; do [ -s "$WORK/$f.pid" ] && kill "$(cat "$WORK/$f.pid")" 2>/dev/null; done
  [ "$STARTED_MUNGE" = 1 ] && [ -s "$WORK/munged.pid" ] && kill "$(cat "$WORK/munged.pid")" 2>/dev/null
  [ -n "${LOCAL_PID:-}" ] && kill "$LOCAL_PID" 2>/dev/null
  return 0
}
trap cleanup EXIT
for f in slurmd slurmctld; do  # a previous run's daemons (this WORK_DIR only)
  [ -s "$WORK/$f.pid" ] && kill "$(cat "$WORK/$f.pid")" 2>/dev/null && sleep 1
done
slurmctld -i || die "slurmctld does not start; see $WORK/slurmctld.log"
slurmd || die "slurmd does not start; see $WORK/slurmd.log"
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo -h -o %T | grep -q idle || die "the node is not idle: $(sinfo -h); see $WORK/slurmd.log"
say "cluster up: $(sinfo -h -o '%P %D %c CPUs %T')"

# ---- the quick embedded-scene protocol (scripts/synthetic.sh --quick), two seeds
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE  # one thread per scene, the same here and in the jobs
DATA=$WORK/data; SCENE=synthetic_quick
[ -d "$DATA/$SCENE/sparse" ] || python tools/make_scene.py --out "$DATA/$SCENE" --width 480 --height 360 --views 16 \
  --force --quiet || die "make_scene failed"
if [ "${CI_SLURM_FULL:-0}" = 1 ]; then
  FLAGS=(--train_iters 1500 --steps 4 --iters_per_step 100
         --extra_train="--densify_until_iter 750 --opacity_reset_interval 100000 --sh_increase_interval 375")
else
  FLAGS=(--train_iters 300 --steps 4 --iters_per_step 30
         --extra_train="--densify_until_iter 150 --opacity_reset_interval 100000 --sh_increase_interval 75")
fi
FLAGS=(--lr_res 8 --scale 4 --sr_model embedded-x4 "${FLAGS[@]}")
rm -rf "$WORK/local" "$WORK/slurm"

say "local reference run (background): $WORK/local.out"
python tools/launch.py --launcher local --scenes "$DATA" "$WORK/local" "$SCENE" --seeds 0 1 -- "${FLAGS[@]}" \
  > "$WORK/local.out" 2>&1 &
LOCAL_PID=$!

say "submitting the array"
python tools/launch.py --launcher slurm --partition ci --time 120 --gpus_per_job 0 --cpus_per_job 1 --mem 2G \
  --job_name ci3dsr --scenes "$DATA" "$WORK/slurm" "$SCENE" --seeds 0 1 -- "${FLAGS[@]}" | tee "$WORK/submit.out"
ARRAY=$(sed -n 's/^array \([0-9]*\):.*/\1/p' "$WORK/submit.out")
SUMMARY=$(sed -n 's/.*summary job \([0-9]*\) runs.*/\1/p' "$WORK/submit.out")
[ -n "$ARRAY" ] && [ -n "$SUMMARY" ] || die "no job ids in the launcher's output"
squeue

# ---- requeue seed 0 between two denoising steps of its 3DSR stage
M0=$WORK/slurm/${SCENE}_seed0
RUN=$M0/sr/sr
say "waiting for job ${ARRAY}_0 to finish its first 3DSR step ($RUN/step_1)"
REQUEUED=0
for _ in $(seq 7200); do
  if ls "$RUN"/step_*/checkpoint.pth >/dev/null 2>&1; then
    if python - "$RUN/log.json" <<'EOF'
import json, sys
sys.exit(0 if not json.load(open(sys.argv[1])).get("complete") else 1)
EOF
    then
      STEPS=$(ls -d "$RUN"/step_*/ | wc -l)
      say "3DSR of seed 0 at step $STEPS of 4: scontrol requeue ${ARRAY}_0"
      scontrol requeue "${ARRAY}_0" && REQUEUED=1
    fi
    break
  fi
  squeue -h -j "${ARRAY}_0" | grep -q . || break
  sleep 0.5
done
squeue

say "waiting for the array and the summary job"
for _ in $(seq 7200); do
  [ -z "$(squeue -h -j "$ARRAY,$SUMMARY" 2>/dev/null)" ] && break
  sleep 2
done
say "waiting for the local run"
wait "$LOCAL_PID"; LOCAL_RC=$?; LOCAL_PID=

# ---- checks
FAILED=0
check() { if [ "$1" = 0 ]; then echo "PASS: $2"; else echo "FAIL: $2"; FAILED=1; fi; }
echo; echo "== jobs"
for t in "${ARRAY}_0" "${ARRAY}_1" "$SUMMARY"; do
  scontrol show job "$t" 2>/dev/null | grep -oE "\<(JobId|ArrayJobId|ArrayTaskId|JobName|JobState|Restarts|ExitCode)=[^ ]*" | \
    tr '\n' ' '; echo
done
echo; echo "== launch.json"
for m in "$WORK"/slurm/${SCENE}_seed*; do echo "$(basename "$m"): $(tr -d '\n' < "$m/launch.json")"; done
echo; echo "== seed 0 run.log (launcher lines, stage headers, resume)"
grep -E "^=== launch|^\[[a-z0-9 -]+\] (train|render|sr_refine|metrics)\.py|Resuming" "$M0/run.log" | cut -c1-160
echo
check $(( REQUEUED == 1 ? 0 : 1 )) "scontrol requeue ${ARRAY}_0 issued while 3DSR was between steps"
scontrol show job "${ARRAY}_0" | grep -q "Restarts=1"; check $? "SLURM restarted job ${ARRAY}_0 once (Restarts=1)"
grep -q "SLURM restart 1" "$M0/run.log"; check $? "the requeued job ran again (run.log: SLURM restart 1)"
grep -qE "^Resuming .*sr/sr after denoising step [1-3]/4" "$M0/run.log"
check $? "3DSR resumed from its last denoising step"
python - "$WORK/slurm" "$WORK/local" "$SCENE" <<'EOF'
import hashlib, json, os, re, sys
slurm, local, scene = sys.argv[1:]
ok = True
def fail(msg):
    global ok
    ok = False
    print("  " + msg)
def stages(log):
    """Stage headers per attempt of run.log: [[stage, ...], ...]."""
    attempts = []
    for line in open(log):
        if line.startswith("=== launch:") and " attempt " in line:
            attempts.append([])
        m = re.match(r"^\[([a-z0-9 -]+)\] (train|render|sr_refine|metrics)\.py", line)
        if m and attempts:
            attempts[-1].append(m.group(1))
    return attempts
for seed in (0, 1):
    name = f"{scene}_seed{seed}"
    st = json.load(open(os.path.join(slurm, name, "launch.json")))
    if st.get("state") != "done":
        fail(f"{name}: state {st.get('state')}: {st.get('reason')}")
    att = stages(os.path.join(slurm, name, "run.log"))
    # a stage started again after a restart must be the one the kill interrupted: the last one of the
    # attempt before; every stage finished (started and not the interrupted one) runs once
    finished = [s for a in att[:-1] for s in a[:-1]] + att[-1]
    dup = sorted({s for s in finished if finished.count(s) > 1})
    if dup:
        fail(f"{name}: stage(s) ran twice to completion: {dup} (attempts: {att})")
    expect_attempts = 2 if seed == 0 else 1
    if len(att) != expect_attempts:
        fail(f"{name}: {len(att)} attempt(s), expected {expect_attempts}: {att}")
    elif seed == 0 and att[0][-1] != "sr 3dsr":
        fail(f"{name}: the requeue interrupted stage {att[0][-1]!r}, not 'sr 3dsr'")
    print(f"  {name}: stages per attempt: {att}")
    a = json.load(open(os.path.join(slurm, name, "results.json")))
    b = json.load(open(os.path.join(local, name, "results.json")))
    keys = ("views", "PSNR", "SSIM", "LPIPS-alex", "LPIPS-vgg", "NIQE", "FID", "MV-warp", "MEt3R")
    pick = lambda r: {m: {k: v[k] for k in keys if k in v} for m, v in r.items() if isinstance(v, dict)}
    if pick(a) != pick(b):
        fail(f"{name}: results.json differs from the local run:\n  slurm {pick(a)}\n  local {pick(b)}")
    def ply_hash(root):
        d = os.path.join(root, name, "sr", "sr", "point_cloud")
        its = sorted(os.listdir(d))
        return hashlib.sha256(open(os.path.join(d, its[-1], "point_cloud.ply"), "rb").read()).hexdigest()
    if ply_hash(slurm) != ply_hash(local):
        fail(f"{name}: final 3DSR point_cloud.ply differs from the local run")
def table(root):
    rows = json.load(open(os.path.join(root, "results.json")))["rows"]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
if not os.path.isfile(os.path.join(slurm, "results.md")):
    fail("the summary job wrote no results.md")
elif table(slurm) != table(local):
    fail("summary tables differ (metrics)")
sys.exit(0 if ok else 1)
EOF
check $? "both scenes done; no stage ran twice to completion; results, PLYs and table equal the local run"
check "$LOCAL_RC" "local run succeeded"
echo; echo "== summary table written by the SLURM summary job ($WORK/slurm/results.md)"
sed -n '/^| scene/,/^$/p' "$WORK/slurm/results.md"
echo "== local run's table ($WORK/local/results.md)"
sed -n '/^| scene/,/^$/p' "$WORK/local/results.md"
[ "$FAILED" = 0 ] && say "all checks passed" || say "some checks failed; logs: $WORK"
exit "$FAILED"
