#!/usr/bin/env bash
# Every GPU check of this project, sized for one short lease of a bare GPU host (no realfake install,
# no network): run from the repository root there.
#
#   benchmarks/gpu_session.sh install PARTS_DIR   # join the parts of wheels.tar (DALI and what it needs,
#                                                 # plus the CIPLAB folder) and install into /tmp/site
#   benchmarks/gpu_session.sh bench               # gpu_check.py, gpu_engines.py, gpu_score.py (at most 590 s: their timeouts)
#   benchmarks/gpu_session.sh ghosts              # gpu_ghosts.py: ghost scoring vs DALI decode-only (progressive and
#                                                 # baseline), ghost training epochs vs model-only steps (at most 420 s)
#   benchmarks/gpu_session.sh sweep SECONDS       # prepare the data, train the sweep's runs in parallel
#                                                 # for at most SECONDS, then write the results table
#
# Logs, JSON rows and the sweep's results (results.md, per-run JSON, no checkpoints) go to $OUT
# (default /tmp/gpu-out). The parts are made here with:
#   tar cf - -C .whl wheels -C /path/to/shared/data real_and_fake_face | split -b 55M -d - .whl/gp-
# `GPU_DRY=1` runs the same steps small on a machine without a GPU (DALI CPU, --device cpu).
set -uo pipefail
mode=${1:?usage: gpu_session.sh install PARTS_DIR | bench | ghosts | sweep SECONDS}
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/gpu-out}
IN=${GPU_IN:-/tmp/in}  # where the parts unpack: wheels/ and real_and_fake_face/
DATA_SRC=${GPU_DATA:-$IN/real_and_fake_face}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

# realfake without installing it: a package of symlinks to the checkout's folders, as pyproject maps them.
shim=/tmp/realfake-shim
mkdir -p "$shim/realfake" && touch "$shim/realfake/__init__.py"
for folder in pipelines models engines jobs benchmarks; do ln -sfn "$REPO/$folder" "$shim/realfake/$folder"; done
export PYTHONPATH="$shim:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
RF=("$PY" -c 'import sys; from realfake.jobs.cli import main; sys.exit(main())')  # the `realfake` command

case "$mode" in
install)
  parts=${2:?give the folder that holds the gp-* parts}
  mkdir -p "$IN" && cat "$parts"/gp-* | tar xf - -C "$IN" || exit 1
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$IN"/wheels/*.whl || exit 1
  "$PY" -c 'import nvidia.dali, torch; print("DALI", nvidia.dali.__version__, "| torch", torch.__version__,
  "| CUDA", torch.cuda.is_available())'
  ls "$DATA_SRC" ;;
bench)
  dry=(); engines=(); score=(--data "$DATA_SRC")
  if [ -n "${GPU_DRY:-}" ]; then
    dry=(--device cpu); engines=(--case simple_cnn@32 --min-seconds 0.1 --repeats 1 --batch 8)
    score=(--n 8 --copies 2 --models simple_cnn --threads 2)
  fi
  set -x
  timeout 170 "$PY" benchmarks/gpu_check.py --data "$DATA_SRC" --n 512 "${dry[@]}" --json "$OUT/check.json" \
    >"$OUT/check.log" 2>&1; echo "gpu_check exit $?"
  timeout 240 "$PY" benchmarks/gpu_engines.py "${dry[@]}" "${engines[@]}" --json "$OUT/engines.json" \
    >"$OUT/engines.log" 2>&1; echo "gpu_engines exit $?"
  timeout 180 "$PY" benchmarks/gpu_score.py "${score[@]}" --json "$OUT/score.json" >"$OUT/score.log" 2>&1
  echo "gpu_score exit $?"
  set +x
  for log in check engines score; do echo "=== $log"; tail -n 40 "$OUT/$log.log"; done ;;
ghosts)
  dry=()
  if [ -n "${GPU_DRY:-}" ]; then
    dry=(--device cpu --n 8 --copies 2 --batch 4 --epochs 1 --seconds 0.5 --threads 2)
  fi
  set -x
  timeout 420 "$PY" benchmarks/gpu_ghosts.py --data "$DATA_SRC" "${dry[@]}" --json "$OUT/ghosts.json" \
    >"$OUT/ghosts.log" 2>&1; echo "gpu_ghosts exit $?"
  set +x
  echo "=== ghosts"; tail -n 30 "$OUT/ghosts.log" ;;
sweep)
  seconds=${2:?give the seconds the parallel training may take}
  common=(--cache gpu --set amp=true --set channels_last=true --device cuda)
  # preset:configuration, in the order they get a slot: what no lease has measured first (native
  # resolution; the report's baselines, queued last by the first lease, never finished), then the
  # 224 px recipe again as this lease's reference. The first lease's pseudo-fakes rows are in
  # docs/gpu-h200.md and are not rerun. A configuration that only evaluates another's runs differently
  # (TTA) belongs in the final pass, so that no two processes train the same run.
  jobs=(resolution:r18-600-crop320 resolution:r18-600-crop320-sbi report-baselines:model1 report-baselines:model2
        report-baselines:resnet18 resolution:r18-224 resolution:r18-128 pseudo-fakes:r18-224-pretrain-sbi)
  final=("resolution:r18-128 r18-224 r18-600-crop320 r18-600-crop320-sbi" "report-baselines:model1 model2 resnet18"
         "pseudo-fakes:r18-224-pretrain-sbi")
  seeds=(0 1 2); parallel=${SWEEP_PARALLEL:-12}
  if [ -n "${GPU_DRY:-}" ]; then
    common=(--cache memory --device cpu --set image_size=32 --set epochs=1); seeds=(0 1); parallel=2
    jobs=(report-baselines:model1 report-baselines:resnet18); final=("report-baselines:model1 resnet18")
  fi
  data=/tmp/gpu-data; sweeps=/tmp/gpu-sweeps
  [ -f "$data/manifest.csv" ] || "${RF[@]}" data prepare "$DATA_SRC" --out "$data" --seed 0 >"$OUT/prepare.log" 2>&1 \
    || { cat "$OUT/prepare.log"; exit 1; }
  [ -f "$OUT/prepare.log" ] && tail -n 3 "$OUT/prepare.log"
  for job in "${jobs[@]}"; do for seed in "${seeds[@]}"; do echo "$job $seed"; done; done \
    | timeout "$seconds" xargs -P "$parallel" -L 1 bash -c '
        preset=${0%%:*}; config=${0#*:}; seed=$1
        log='"$sweeps"'/logs/$config-seed$seed.log; mkdir -p "${log%/*}"; started=$SECONDS
        '"$PY"' -c "import sys; from realfake.jobs.cli import main; sys.exit(main())" \
          sweep --preset "$preset" --only "$config" --seeds "$seed" --data '"$data"' --out '"$sweeps"'/"$preset" '"${common[*]}"' \
          >"$log" 2>&1
        echo "$config seed $seed: exit $? after $((SECONDS - started)) s: $(tail -n 1 "$log")"' 2>/dev/null
  echo "parallel phase: exit $? (124: stopped at the $seconds s limit)"
  # One pass over all configurations writes results.md from the finished runs (evaluating the TTA rows);
  # runs stopped at the limit stay out of the table.
  for entry in "${final[@]}"; do
    preset=${entry%%:*}; only=(); for c in ${entry#*:}; do only+=(--only "$c"); done
    timeout "${FINAL_SECONDS:-90}" "${RF[@]}" sweep --preset "$preset" --data "$data" "${only[@]}" --seeds "$(IFS=,; echo "${seeds[*]}")" \
      --out "$sweeps/$preset" "${common[@]}" --finished-only >"$sweeps/logs/final-$preset.log" 2>&1
    echo "final $preset: exit $?"; cat "$sweeps/$preset/results.md" 2>/dev/null
  done
  # Tables, JSON, logs and plots only: checkpoints (and the .tmp of a save cut short) stay behind.
  (cd "$sweeps" && find . -type f \( -name '*.json' -o -name '*.md' -o -name '*.csv' -o -name '*.log' \
    -o -name '*.png' \) | tar czf "$OUT/sweeps.tgz" -T -) && ls -la "$OUT" ;;
*) echo "unknown mode $mode" >&2; exit 2 ;;
esac
