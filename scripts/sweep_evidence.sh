#!/usr/bin/env bash
# The proxy evidence sweep of this 2-core machine, in priority order, from its own git worktree at a
# fixed commit (each record's provenance names it), two runs side by side with one thread each, with a
# clean stop at UNTIL (HH:MM, local time): a run starts only when the recorded runs like it say it will end
# by then (--fit), so that a machine stopping at UNTIL loses no half-trained run. Sweeping again resumes:
# finished runs are skipped, interrupted ones continue from their checkpoints in WORK.
#
#   UNTIL=02:10 setsid nohup scripts/sweep_evidence.sh > ../sweep.log 2>&1 < /dev/null &
#
# Records land in RESULTS (default: this checkout's results/); commit them as they land:
#   python scripts/commit_records.py   (the message names each record's row, seed, AP, device and commit)
# Stop early: replicate stop --work WORK (runs checkpoint and stop; no step starts after it). Killing
# the process group instead would have submitit requeue the runs (preemption), which go on training.
set -uo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
UNTIL="${UNTIL:?set UNTIL=HH:MM, the clean-stop time}"
RESULTS="${RESULTS:-$HERE/results}"
DATA="${DATA:-$HERE/data}"
WORK="${WORK:-$(dirname "$HERE")/sweep-work}"
COMMIT="$(git -C "$HERE" rev-parse --short HEAD)"
TREE="${TREE:-$(dirname "$HERE")/sweep-$COMMIT}"
R="${REPLICATE:-$HERE/.venv/bin/replicate}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# the proxy trains in bf16: a CPU that emulates it runs ~18x slower and cannot re-make the backbones (README)
"$(dirname "$R")/python" -c "from replicate.provenance import cpu_has_native_bf16 as n; raise SystemExit(not n())" || {
  echo "== this CPU has no native bf16 ($("$(dirname "$R")/python" -c 'from replicate.provenance import device_name as d; print(d("cpu"))')):" \
       "the proxy evidence is made on AVX-512 BF16 CPUs; nothing was run"; exit 1; }
for profile in proxy proxy-offset0 proxy-offset0.3; do
  [ -f "$DATA/$profile/annotations/val.json" ] || "$R" data synth --profile "$profile" --out "$DATA/$profile" || exit 1
done
# the pretrained backbones the runs load, in this checkout: an absent file is re-made from its record
# (minutes), and a machine that cannot reproduce it (another CPU maker) stops the sweep here, before any run
# is launched on it.
# The backbones are re-made side by side, one thread each (as they were made), one per core.
pids=()
for backbone in narrow narrow_deep; do
  (cd "$HERE" && "$R" pretrain --profile proxy --ensure --quiet --backbone "$backbone" --data-root "$DATA/proxy") &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || exit 1; done
# the commit read at the start (a commit made while the backbones were re-made does not slip in)
[ -d "$TREE" ] || git -C "$HERE" worktree add --detach "$TREE" "$COMMIT" >/dev/null || exit 1
cd "$TREE" || exit 1
# a worktree of a commit without the weights files takes this checkout's when they hash to their records'
for pt in "$HERE"/results/pretrained/*/*.pt; do
  [ -f "$pt" ] || continue
  dest="$TREE/${pt#"$HERE"/}" && [ ! -f "$dest" ] || continue
  want=$(grep -o '"sha256": "[0-9a-f]*"' "${pt%.pt}.json" 2>/dev/null | cut -d'"' -f4)
  [ -n "$want" ] && [ "$(sha256sum "$pt" | cut -d' ' -f1)" = "$want" ] && mkdir -p "$(dirname "$dest")" && cp "$pt" "$dest"
done
export PYTHONPATH="$TREE"
# one absolute deadline (the next UNTIL from now), so that a step starting after it does not read
# UNTIL as tomorrow's: each step gets the minutes left
DEADLINE=$(date -d "$UNTIL" +%s) || exit 1
[ "$DEADLINE" -gt "$(date +%s)" ] || DEADLINE=$((DEADLINE + 86400))
common=(--executor local --results "$RESULTS" --work "$WORK")
rm -f "$WORK/STOP"  # a stop asked of an earlier sweep (replicate stop) does not stop this one
sweep() {  # sweep TARGET SEEDS [PROFILE] [PARALLELISM]
  local profile="${3:-proxy}" left=$(( (DEADLINE - $(date +%s)) / 60 ))
  [ "$left" -ge 1 ] || { echo "== deadline $UNTIL reached"; exit 0; }
  [ ! -e "$WORK/STOP" ] || { echo "== stop requested ($WORK/STOP)"; exit 0; }
  echo "== $(date +%H:%M) $1 --seeds $2 --profile $profile ($left min left)"
  "$R" sweep "$1" --seeds "$2" --profile "$profile" --data-root "$DATA/$profile" --parallelism "${4:-2}" \
      --max-minutes "$left" --fit "${common[@]}"
}
# 1. calibration at the proxy's schedule (4800 iterations since it was found under-converged at 2400):
# the schedule table first (its 9600-iteration rows, twice a run's cost, say whether doubling still gains
# much: if it does, the schedule grows again before the rest of the calibration is spent on it), then the
# ranking at 3 seeds, the noise at 5 seeds (RetinaNet-Conf is built on RetinaNet), the dial and the
# precision check
sweep benchmark:schedule 1
# the ranking one seed at a time over all seven baselines, so that a sweep stopped early leaves every
# baseline with the same number of seeds (Spearman's rho on equal footing); then the noise's seeds 3-4
for seeds in 1 2 3; do sweep benchmark:ranking "$seeds"; done
sweep benchmark:noise 5
sweep benchmark:dial 1 proxy-offset0 1 & sweep benchmark:dial 1 proxy-offset0.3 1; wait
sweep benchmark:precision 1
# the deeper backbone (the chapters' ResNet-101 rows) against ResNet-50's, before any of those rows runs
sweep benchmark:depth 3
# 2. the evidence: every reproduced row of RetinaNet-Conf and MOD, the main tables first, 2 seeds then 3;
#    one comma-separated target per pass, so that the two slots stay busy across tables. EVIDENCE=... narrows
#    it (e.g. EVIDENCE=retinanet_conf:code_variants,retinanet_conf while a chapter's set-up is being decided)
DEFAULT_EVIDENCE=retinanet_conf:table1,retinanet_conf:table2,mod:table1,mod:table2,mod:table5,mod:table6
DEFAULT_EVIDENCE=$DEFAULT_EVIDENCE,retinanet_conf:code_variants,mod:code_variants,retinanet_conf,mod
EVIDENCE="${EVIDENCE:-$DEFAULT_EVIDENCE}"
sweep "$EVIDENCE" 2
sweep "$EVIDENCE" 3
# 3. the schedule table's longer rows at 3 seeds (its 1200- and 9600-iteration rows hold seed 0 only: 6 runs,
#    about 8.5 run-equivalents); the one-seed checks (precision, dial, backbone) cap their own seeds
sweep benchmark:schedule 3
# 4. the chapters built since (SALT-Net, AlignDet, TSD): the tables of their main claims first, one seed at a
#    time over all of them, so that a sweep stopped early leaves each chapter with some evidence. NEXT=... narrows
#    it. They cost more than a RetinaNet run (SALT-Net ~1.6x, AlignDet ~3.4x, TSD: see its chapter).
DEFAULT_NEXT=salt:table1,salt:table4,aligndet:table3,aligndet:table1,aligndet:table2,tsd:table1,tsd:table3
DEFAULT_NEXT=$DEFAULT_NEXT,salt,aligndet,tsd
NEXT="${NEXT:-$DEFAULT_NEXT}"
for seeds in 1 2 3; do sweep "$NEXT" "$seeds"; done
echo "== $(date +%H:%M) sweep_evidence done"
