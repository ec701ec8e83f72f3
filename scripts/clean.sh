#!/usr/bin/env bash
# Remove generated artifacts. Never touches code, configs, data/, models/ or .venv/.
#
#   scripts/clean.sh                 # targeted (default): sweep artifacts only; production runs are kept
#   scripts/clean.sh --full          # everything generated: also production checkpoints, all logs, W&B offline runs
#   scripts/clean.sh --full --redis  # ... and the replay-buffer keys under REDIS_NAMESPACE (default gfn:) in Redis
#   scripts/clean.sh --redis         # only the replay-buffer keys under REDIS_NAMESPACE; no files
#   scripts/clean.sh --dry-run       # list what would go, remove nothing
#   scripts/clean.sh --yes           # do not ask (needed when stdin is not a terminal)
#
# targeted: checkpoints/ training_logs/ logs/sweeps/ experiment_summary.{md,tex,png}
# full:     the targeted set + production_checkpoints/ training_production.log logs/ wandb/ __pycache__/
# Environment: OUT_ROOT (default this repository) is where the artifacts are looked for;
# REDIS_URL (default redis://127.0.0.1:${REDIS_PORT:-6379}/0) and REDIS_NAMESPACE for --redis.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_ROOT=${OUT_ROOT:-$ROOT}
mode=targeted dry=0 yes=0 redis=0 files=1 mode_given=0
for a in "$@"; do
  case "$a" in
    --targeted) mode=targeted mode_given=1 ;;
    --full) mode=full mode_given=1 ;;
    --dry-run) dry=1 ;;
    --yes|-y) yes=1 ;;
    --redis) redis=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "clean: unknown argument '$a' (see scripts/clean.sh --help)" >&2; exit 2 ;;
  esac
done
(( redis )) && [[ "$mode" == targeted && $mode_given == 1 ]] && { echo "clean: --redis goes with --full, or alone (Redis keys only)" >&2; exit 2; }
(( redis && ! mode_given )) && files=0

targets=(checkpoints training_logs logs/sweeps experiment_summary.md experiment_summary.tex experiment_summary.png)
[[ "$mode" == full ]] && targets+=(production_checkpoints training_production.log logs wandb)
found=()
(( files )) || targets=()
for t in "${targets[@]}"; do [[ -e "$OUT_ROOT/$t" ]] && found+=("$OUT_ROOT/$t"); done
caches=()
if [[ "$mode" == full ]] && (( files )); then
  while IFS= read -r -d '' d; do caches+=("$d"); done < <(find "$OUT_ROOT" -path "$OUT_ROOT/.venv" -prune -o -type d -name __pycache__ -print0)
fi

url=${REDIS_URL:-redis://127.0.0.1:${REDIS_PORT:-6379}/0}
ns=${REDIS_NAMESPACE:-gfn:}
if (( files )); then echo "clean ($mode) in $OUT_ROOT:"; else echo "clean (Redis keys only):"; fi
if (( files && ${#found[@]} + ${#caches[@]} == 0 )); then echo "  no files to remove"; fi
for f in "${found[@]}"; do echo "  $f ($(du -sh "$f" 2>/dev/null | cut -f1))"; done
(( ${#caches[@]} )) && echo "  ${#caches[@]} __pycache__ directories"
(( redis )) && echo "  Redis keys matching '$ns*' at $url"
(( dry )) && { echo "dry run: nothing removed"; exit 0; }
(( ${#found[@]} + ${#caches[@]} + redis == 0 )) && exit 0

if (( ! yes )); then
  [[ -t 0 ]] || { echo "clean: refusing to delete without a terminal to confirm: pass --yes" >&2; exit 1; }
  read -r -p "Delete these? [y/N] " answer
  [[ "$answer" == y || "$answer" == Y || "$answer" == yes ]] || { echo "nothing removed"; exit 0; }
fi
(( ${#found[@]} )) && rm -rf -- "${found[@]}"
(( ${#caches[@]} )) && rm -rf -- "${caches[@]}"
if (( redis )); then
  PYTHON=${PYTHON:-python}
  "$PYTHON" - "$url" "$ns" <<'EOF'
import sys

import redis

url, ns = sys.argv[1], sys.argv[2]
client = redis.Redis.from_url(url, socket_connect_timeout=3)
try:
    client.ping()
except redis.ConnectionError as err:
    sys.exit(f"clean: Redis not reachable at {url} ({err}): start it with scripts/start_redis.sh or set REDIS_URL")
removed = 0
batch = []
for key in client.scan_iter(match=ns.replace("*", r"\*") + "*", count=1000):
    batch.append(key)
    if len(batch) == 1000:
        removed += client.delete(*batch)
        batch.clear()
if batch:
    removed += client.delete(*batch)
print(f"  removed {removed} Redis keys under '{ns}'")
EOF
fi
echo "done"
