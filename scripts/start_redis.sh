#!/usr/bin/env bash
# Start a local Redis server for the replay buffer, bound to loopback only; does nothing if one
# already answers on the port. Environment: REDIS_PORT (6379), REDIS_DATA_DIR (.redis),
# REDIS_PERSIST (yes: append-only file in the data directory; no: memory only).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${REDIS_PORT:-6379}
DIR=${REDIS_DATA_DIR:-.redis}
PERSIST=${REDIS_PERSIST:-yes}
command -v redis-server >/dev/null || { echo "start_redis: redis-server not installed: run scripts/setup.sh or apt-get install redis-server" >&2; exit 1; }
if redis-cli -h 127.0.0.1 -p "$PORT" ping >/dev/null 2>&1; then
  echo "start_redis: Redis already answering on 127.0.0.1:$PORT"
  exit 0
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
redis-server --bind 127.0.0.1 --port "$PORT" --protected-mode yes --dir "$DIR" --appendonly "$PERSIST" \
  --save "" --daemonize yes --logfile "$DIR/redis.log" --pidfile "$DIR/redis-$PORT.pid"
for _ in $(seq 50); do
  redis-cli -h 127.0.0.1 -p "$PORT" ping >/dev/null 2>&1 && { echo "start_redis: Redis on 127.0.0.1:$PORT (data in $DIR, persistence $PERSIST)"; exit 0; }
  sleep 0.1
done
echo "start_redis: Redis did not answer on 127.0.0.1:$PORT; see $DIR/redis.log" >&2
exit 1
