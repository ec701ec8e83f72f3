#!/usr/bin/env bash
# Hyperparameter sweep: one training run per line "likelihood_weight,pf_temp_high,use_buffer_prob",
# run one after another; a failed run is recorded and the sweep goes on. At the end
# scripts/summarize.py writes experiment_summary.md, .tex and .png from the runs' own CSV logs.
#
#   ./run_experiments.sh                                   # the EXPERIMENTS list below
#   ./run_experiments.sh -f sweep.txt                      # lines from a file ('#' starts a comment)
#   ./run_experiments.sh trainer.max_steps=100 optimizer.lr=2e-4   # extra Hydra overrides for every run
#   tail -f training_logs/<sweep>/<run>.log                # follow the current run
#
# Per run NAME (expN_lwX_ptY_ubpZ) of sweep SWEEP:
#   logs/sweeps/SWEEP/NAME/             Hydra output: config, csv/ metrics, offline W&B run, NAME log
#   checkpoints/SWEEP/NAME/             checkpoints
#   training_logs/SWEEP/NAME.log        the run's console output
#   W&B run name NAME, group SWEEP; Redis namespace (buffer=redis) gfn:SWEEP-NAME
# and logs/sweeps/SWEEP/runs.tsv records every run's parameters, exit status and paths.
#
# Environment:
#   PYTHON      interpreter, default `python` from PATH (activate your environment first)
#   SWEEP       sweep name, default sweep_<time>
#   EXPERIMENT  experiment config for every run, default none (the offline default); e.g. full_scale
#   LOGGER      logger config, default many (W&B offline + CSV; the summary needs the CSV)
#   NPROC       processes per run; above 1 each run is launched with torchrun (DDP)
#   SUMMARY     summary path without suffix, default experiment_summary
#   OUT_ROOT    directory that receives logs/sweeps, checkpoints and training_logs, default this repository
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"

# likelihood_weight,pf_temp_high,use_buffer_prob
EXPERIMENTS="
1.0,1.5,0.5
0.2,1.5,0.5
1.0,2.0,0.5
1.0,1.5,0.0
"

die() { echo "run_experiments: $*" >&2; exit 1; }
if [[ "${1:-}" == "-f" ]]; then
  [[ -f "${2:-}" ]] || die "-f needs an experiment file, got '${2:-}'"
  EXPERIMENTS=$(cat "$2")
  shift 2
fi
PYTHON=${PYTHON:-python}
SWEEP=${SWEEP:-sweep_$(date +%Y-%m-%d_%H-%M-%S)}
EXPERIMENT=${EXPERIMENT:-}
LOGGER=${LOGGER:-many}
NPROC=${NPROC:-1}
OUT_ROOT=${OUT_ROOT:-$ROOT}
SUMMARY=${SUMMARY:-$OUT_ROOT/experiment_summary}
command -v "$PYTHON" >/dev/null || die "interpreter '$PYTHON' not found: activate the project's environment (source .venv/bin/activate) or set PYTHON"
[[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || die "NPROC must be a positive integer, got '$NPROC'"
case "$LOGGER" in csv|many) ;; *) echo "run_experiments: LOGGER=$LOGGER writes no CSV metrics: the summary will have none" >&2 ;; esac

# Validate every line before the first run starts: a typo should not surface hours into a sweep.
lines=()
while IFS= read -r raw; do
  line=${raw%%#*}
  line=${line//[[:space:]]/}
  [[ -z "$line" ]] && continue
  IFS=, read -r lw pt ubp extra <<<"$line"
  num='^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$'
  [[ -z "${extra:-}" && "$lw" =~ $num && "$pt" =~ $num && "$ubp" =~ $num ]] \
    || die "bad experiment line '$raw': expected likelihood_weight,pf_temp_high,use_buffer_prob (three numbers)"
  lines+=("$lw,$pt,$ubp")
done <<<"$EXPERIMENTS"
(( ${#lines[@]} )) || die "no experiments given"

SWEEP_DIR=$OUT_ROOT/logs/sweeps/$SWEEP
mkdir -p "$SWEEP_DIR" "$OUT_ROOT/training_logs/$SWEEP" "$OUT_ROOT/checkpoints/$SWEEP"
TSV=$SWEEP_DIR/runs.tsv
printf 'name\tlikelihood_weight\tpf_temp_high\tuse_buffer_prob\tstatus\texit_code\trun_dir\tlog\n' >"$TSV"
trap 'echo "run_experiments: interrupted; summary of the runs so far follows" >&2; interrupted=1' INT TERM
interrupted=0
if (( NPROC > 1 )); then launch=("$PYTHON" -m torch.distributed.run --nnodes=1 --nproc_per_node="$NPROC"); else launch=("$PYTHON"); fi

i=0
for line in "${lines[@]}"; do
  (( interrupted )) && break
  i=$((i + 1))
  IFS=, read -r lw pt ubp <<<"$line"
  name="exp${i}_lw${lw}_pt${pt}_ubp${ubp}"
  run_dir=$SWEEP_DIR/$name
  log=$OUT_ROOT/training_logs/$SWEEP/$name.log
  args=(train.py "run_name=$SWEEP-$name" "hydra.run.dir=$run_dir" "logger=$LOGGER"
        "callbacks.model_checkpoint.dirpath=$OUT_ROOT/checkpoints/$SWEEP/$name"
        "reward.likelihood_weight=$lw" "gfn.pf_temp_high=$pt" "gfn.use_buffer_prob=$ubp")
  [[ -n "$EXPERIMENT" ]] && args+=("experiment=$EXPERIMENT")
  [[ "$LOGGER" == wandb || "$LOGGER" == many ]] && args+=("logger.wandb.name=$name" "logger.wandb.group=$SWEEP")
  (( NPROC > 1 )) && args+=("trainer.devices=$NPROC")
  echo "=== $(date -Is) Starting experiment #$i of ${#lines[@]}: $name"
  echo "=== log: $log"
  "${launch[@]}" "${args[@]}" "$@" >"$log" 2>&1
  code=$?
  if (( code == 0 )); then status=ok; echo "=== $name completed successfully"
  else status=failed; echo "=== $name FAILED with exit status $code (see $log); going on" >&2; fi
  (( interrupted )) && status=interrupted
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$lw" "$pt" "$ubp" "$status" "$code" "$run_dir" "$log" >>"$TSV"
done

"$PYTHON" "$ROOT/scripts/summarize.py" "$TSV" --out "$SUMMARY" || die "summary failed; the runs are listed in $TSV"
failed=$(awk -F'\t' 'NR > 1 && $5 != "ok"' "$TSV" | wc -l)
echo "=== sweep $SWEEP: $((i - failed)) of ${#lines[@]} runs ok; runs in $TSV"
(( interrupted )) && exit 130
exit 0
