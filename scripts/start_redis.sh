#!/usr/bin/env bash
# Start a Redis server for the replay buffer; does nothing if one already answers on the port.
# Environment: REDIS_PORT (6379), REDIS_DATA_DIR (.redis), REDIS_PERSIST (yes: append-only file in
# the data directory; no: memory only), REDIS_BIND (127.0.0.1; another address only with
# REDIS_PASSWORD, e.g. for the nodes of a SLURM job), REDIS_PASSWORD (none).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${REDIS_PORT:-6379}
DIR=${REDIS_DATA_DIR:-.redis}
PERSIST=${REDIS_PERSIST:-yes}
BIND=${REDIS_BIND:-127.0.0.1}
PASSWORD=${REDIS_PASSWORD:-}
case "$BIND" in
  127.0.0.1|localhost|::1) ;;
  *) [[ -n "$PASSWORD" ]] || { echo "start_redis: binding to $BIND exposes Redis beyond this machine: set REDIS_PASSWORD" >&2; exit 1; } ;;
esac
answers() {
  local reply
  if [[ -n "$PASSWORD" ]]; then reply=$(REDISCLI_AUTH="$PASSWORD" redis-cli -h "$BIND" -p "$PORT" ping 2>/dev/null || true)
  else reply=$(redis-cli -h "$BIND" -p "$PORT" ping 2>/dev/null || true); fi
  [[ "$reply" == PONG ]]
}
command -v redis-server >/dev/null || { echo "start_redis: redis-server not installed: run scripts/setup.sh or apt-get install redis-server" >&2; exit 1; }
if answers; then
  echo "start_redis: Redis already answering on $BIND:$PORT"
  exit 0
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
extra=()
[[ -n "$PASSWORD" ]] && extra=(--requirepass "$PASSWORD")
redis-server --bind "$BIND" --port "$PORT" --protected-mode yes --dir "$DIR" --appendonly "$PERSIST" \
  --save "" --daemonize yes --logfile "$DIR/redis.log" --pidfile "$DIR/redis-$PORT.pid" "${extra[@]}"
for _ in $(seq 50); do
  answers && { echo "start_redis: Redis on $BIND:$PORT (data in $DIR, persistence $PERSIST)"; exit 0; }
  sleep 0.1
done
echo "start_redis: Redis did not answer on $BIND:$PORT; see $DIR/redis.log" >&2
exit 1
