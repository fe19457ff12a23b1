# Shared by the per-dataset batch scripts: run tools/run_scene.py on each scene, one log per scene.
# A scene whose stages are done is skipped stage by stage (re-runnable after a failure or Ctrl-C);
# a failing scene does not stop the others; the exit status says whether all succeeded.
# Usage (from a dataset script): run_batch DATA_ROOT OUT_ROOT "scene1 scene2 ..." [run_scene.py flags...]
run_batch() {
  local data_root=$1 out_root=$2 scenes=$3
  shift 3
  local failed=()
  trap 'echo; echo "interrupted: rerun the same command to continue"; exit 130' INT TERM
  mkdir -p "$out_root"
  for scene in $scenes; do
    if [ ! -d "$data_root/$scene" ]; then
      echo "[$scene] missing: $data_root/$scene does not exist (see the download script)"; failed+=("$scene"); continue
    fi
    mkdir -p "$out_root/$scene"
    echo "=== $scene -> $out_root/$scene (log: $out_root/$scene/run.log)"
    python tools/run_scene.py -s "$data_root/$scene" -m "$out_root/$scene" "$@" 2>&1 | tee -a "$out_root/$scene/run.log"
    local status=${PIPESTATUS[0]}
    [ "$status" -eq 130 ] && exit 130
    [ "$status" -ne 0 ] && failed+=("$scene")
  done
  python tools/summarize.py "$out_root" || true
  if [ ${#failed[@]} -gt 0 ]; then
    echo "failed scenes: ${failed[*]} (see their run.log; rerun to continue)"; return 1
  fi
}
