#!/usr/bin/env bash
# Local Remote Execution API workers for --config=remote-exec (docs/remote-execution.md).
#
#   tools/remote_exec/worker.sh start [--port auto|N] [--workers N] [--state DIR]   prints grpc://127.0.0.1:PORT
#   tools/remote_exec/worker.sh stop [--state DIR]
#
# start compiles Bazel's own remote worker (src/tools/remote of Debian's bazel-bootstrap-source,
# against the server jar of Debian's Bazel), builds the worker image (image.sh), and starts N
# workers sharing one CAS directory. Each runs every action inside the image through
# tools/remote_exec/docker (a chroot in a private mount namespace, no network). With N > 1, nginx
# spreads Execute calls over them as one gRPC endpoint. State (default /tmp/tinyq-remote-exec) must
# lie under /tmp: actions' directories are bound into the image's /tmp.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cmd=${1:-}
shift || true
port=auto workers=1 state=/tmp/tinyq-remote-exec
while [[ $# -gt 0 ]]; do
  case $1 in
    --port) port=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --state) state=$2; shift 2 ;;
    *) echo "worker.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$state" == /tmp/* ]] || { echo "worker.sh: --state must lie under /tmp, not $state" >&2; exit 2; }
jar=/usr/share/bazel/A-server.jar
src=/usr/src/bazel-bootstrap/src/tools/remote/src/main/java

listening() { python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$1" 2>/dev/null; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

stop() {
  for pidfile in "$state"/w*/pid "$state"/nginx/nginx.pid; do
    [[ -f "$pidfile" ]] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

compile_worker() {
  local need=()
  [[ -d "$src" ]] || need+=(bazel-bootstrap-source)
  command -v javac >/dev/null || need+=(default-jdk-headless)
  command -v nginx >/dev/null || need+=(nginx)
  if ((${#need[@]})); then apt-get update -qq >&2 && apt-get install -y -qq "${need[@]}" >&2; fi
  local stamp
  stamp=$( (cat "$jar"; find "$src" -name '*.java' | sort | xargs cat) | sha256sum | cut -c1-16)
  if [[ ! -f "$state/worker/$stamp" ]]; then
    rm -rf "$state/worker" && mkdir -p "$state/worker/classes"
    javac -nowarn -cp "$jar" -d "$state/worker/classes" $(find "$src" -name '*.java') 2>&1 | grep -v '^Note:' >&2 || true
    touch "$state/worker/$stamp"
  fi
}

start_worker() {  # start_worker K PORT
  local dir="$state/w$1"
  mkdir -p "$dir/work"
  rm -rf "${dir:?}/work/"*
  PATH="$repo/tools/remote_exec:/usr/sbin:/usr/bin:/sbin:/bin" TINYQ_WORKER_IMAGES="$state/images" \
    nohup java -cp "$state/worker/classes:$jar" com.google.devtools.build.remote.worker.RemoteWorker \
    --listen_port="$2" --work_path="$dir/work" --cas_path="$state/cas" --pid_file="$dir/pid" \
    --jobs="$(nproc)" >"$dir/log" 2>&1 &
  for _ in $(seq 100); do
    listening "$2" && return 0
    sleep 0.2
  done
  echo "worker.sh: worker $1 did not start; its log:" >&2
  cat "$dir/log" >&2
  return 1
}

balancer() {  # balancer PORT WORKER_PORTS...: nginx passing gRPC round-robin to the workers
  local front=$1
  shift
  mkdir -p "$state/nginx"
  {
    echo "pid $state/nginx/nginx.pid; error_log $state/nginx/error.log; daemon on;"
    echo "events {} http { access_log off; client_max_body_size 0; upstream workers {"
    for p in "$@"; do echo "  server 127.0.0.1:$p;"; done
    # REAPI metadata travels in headers with dots in their names, which nginx drops by default.
    echo "} server { listen 127.0.0.1:$front http2; ignore_invalid_headers off; location / { grpc_pass grpc://workers;"
    echo "  grpc_read_timeout 3600s; grpc_send_timeout 3600s; } } }"
  } >"$state/nginx/nginx.conf"
  nginx -c "$state/nginx/nginx.conf" -p "$state/nginx" -e "$state/nginx/error.log"
}

case $cmd in
  start)
    stop
    mkdir -p "$state/images" "$state/cas"
    compile_worker
    image=$("$repo/tools/remote_exec/image.sh" --name)
    "$repo/tools/remote_exec/image.sh" "$state/images/${image//[^A-Za-z0-9._-]/_}" >/dev/null
    [[ "$port" == auto ]] && port=$(free_port)
    if ((workers == 1)); then
      start_worker 1 "$port"
    else
      ports=()
      for k in $(seq "$workers"); do ports+=("$(free_port)"); start_worker "$k" "${ports[-1]}"; done
      balancer "$port" "${ports[@]}"
    fi
    echo "grpc://127.0.0.1:$port"
    ;;
  stop) stop ;;
  *) echo "usage: worker.sh start [--port auto|N] [--workers N] [--state DIR] | stop [--state DIR]" >&2; exit 2 ;;
esac
