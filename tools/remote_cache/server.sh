#!/usr/bin/env bash
# Starts and stops nginx as a Bazel HTTP remote cache (tools/remote_cache/nginx.conf.in).
#
#   tools/remote_cache/server.sh start [--addr A] [--port P|auto] [--store DIR] [--state DIR] [--max-body SIZE]
#   tools/remote_cache/server.sh stop|status [--state DIR]
#
# start prints the cache's URL on stdout (for TINYQ_REMOTE_CACHE); everything else goes to stderr.
# Defaults: 127.0.0.1:9090, blobs in $TINYQ_CACHE_HOME/store, nginx's pid, config and logs in
# $TINYQ_CACHE_HOME/nginx ($TINYQ_CACHE_HOME defaults to ~/.cache/tinyq-remote-cache).
# Writes need a credential: TINYQ_CACHE_WRITER=user:password at start becomes the one writer in
# $STATE/writers.htpasswd (sha512-crypt); without it the cache is read-only (every PUT gets 401).
# Installs Debian's nginx and openssl when they are missing, as tools/bazel does for its packages.
# Exit codes: 0 ok (status: running), 1 status: not running, 2 bad usage, 3 no usable nginx,
# 4 nginx did not start or stop.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

die() { echo "remote_cache: $2" >&2; exit "$1"; }
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

(($#)) || usage
cmd=$1; shift
case "$cmd" in start|stop|status) ;; -h|--help) usage ;; *) die 2 "unknown command '$cmd' (start, stop or status)" ;; esac

addr=127.0.0.1 port=9090 store="" state="" max_body=1g
while (($#)); do
  (($# >= 2)) || die 2 "$1 needs a value"
  case "$1" in
    --addr) addr=$2 ;;
    --port) port=$2 ;;
    --store) store=$2 ;;
    --state) state=$2 ;;
    --max-body) max_body=$2 ;;
    *) die 2 "unknown option '$1'" ;;
  esac
  shift 2
done
default_home() {
  [[ -n "${TINYQ_CACHE_HOME:-}${XDG_CACHE_HOME:-}${HOME:-}" ]] || die 2 "no HOME: pass --store and --state, or set TINYQ_CACHE_HOME"
  echo "${TINYQ_CACHE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/tinyq-remote-cache}"
}
[[ -n "$state" ]] || state=$(default_home)/nginx
if [[ "$cmd" == start && -z "$store" ]]; then store=$(default_home)/store; fi
[[ "$port" == auto || ( "$port" =~ ^[0-9]+$ && "$port" -ge 1 && "$port" -le 65535 ) ]] || die 2 "--port must be 1-65535 or auto, not '$port'"
[[ "$max_body" =~ ^[0-9]+[kKmMgG]?$ ]] || die 2 "--max-body must be a size like 512m or 2g, not '$max_body'"
[[ "$addr" =~ ^[0-9A-Za-z.:-]+$ ]] || die 2 "--addr must be an IP address or host name, not '$addr'"

pid_of_running() {
  # The pid in the state dir, if it is a live nginx (a stale file after a crash names nothing).
  local pid
  pid=$(cat "$state/nginx.pid" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null)" == nginx ]] || return 1
  echo "$pid"
}

nginx_binary() {
  local missing=() pkg
  for pkg in nginx openssl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    echo "remote_cache: installing missing Debian packages: ${missing[*]}" >&2
    local sudo_cmd=()
    if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -qq >&2 || die 3 "apt-get update failed"
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || die 3 "apt-get install ${missing[*]} failed"
  fi
  local bin
  bin=$(command -v nginx || echo /usr/sbin/nginx)
  [[ -x "$bin" ]] || die 3 "no nginx binary after installing Debian's nginx"
  "$bin" -V 2>&1 | grep -q -- --with-http_dav_module || die 3 "$bin has no WebDAV module (http_dav_module); Bazel's PUTs need it"
  echo "$bin"
}

write_writers() {  # the htpasswd nginx checks PUTs against: TINYQ_CACHE_WRITER's user, or nobody
  local file=$1 user password
  (umask 077 && : >"$file")
  if [[ -z "${TINYQ_CACHE_WRITER:-}" ]]; then
    echo "remote_cache: no TINYQ_CACHE_WRITER: serving read-only (every PUT gets 401)" >&2
    return
  fi
  [[ "$TINYQ_CACHE_WRITER" =~ ^[A-Za-z0-9._-]+:[^[:space:]]{8,}$ ]] \
    || die 2 "TINYQ_CACHE_WRITER must be user:password (user of letters, digits, . _ -; a password of 8 or more non-blank characters)"
  user=${TINYQ_CACHE_WRITER%%:*} password=${TINYQ_CACHE_WRITER#*:}
  printf '%s:%s\n' "$user" "$(printf '%s' "$password" | openssl passwd -6 -stdin)" >"$file"
}

case "$cmd" in
  status)
    if pid=$(pid_of_running); then
      echo "remote_cache: running (pid $pid) at $(cat "$state/url")" >&2
      cat "$state/url"
      exit 0
    fi
    echo "remote_cache: not running (state $state)" >&2
    exit 1
    ;;

  stop)
    if ! pid=$(pid_of_running); then
      echo "remote_cache: not running (state $state)" >&2
      exit 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 100); do
      [[ -d "/proc/$pid" ]] || { echo "remote_cache: stopped (pid $pid)" >&2; exit 0; }
      sleep 0.1
    done
    die 4 "nginx (pid $pid) did not stop within 10 s"
    ;;

  start)
    if pid=$(pid_of_running); then
      echo "remote_cache: already running (pid $pid)" >&2
      cat "$state/url"
      exit 0
    fi
    nginx=$(nginx_binary)
    if [[ "$port" == auto ]]; then
      port=$(python3 -c 'import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$addr") \
        || die 4 "could not find a free port on $addr"
    fi
    case "$addr" in
      127.*|::1|localhost) ;;
      *) echo "remote_cache: WARNING: serving on $addr without TLS or auth; put a TLS proxy with auth in front (docs/remote-cache.md)" >&2 ;;
    esac
    store=$(realpath -m "$store") state=$(realpath -m "$state")
    # They go into nginx's config through sed: no spaces, quotes, ';' or sed's '|' and '&'.
    [[ "$store$state" =~ ^[A-Za-z0-9/._+-]+$ ]] || die 2 "--store and --state must be plain paths (letters, digits, / . _ + -)"
    mkdir -p "$store/.tmp" "$state"
    write_writers "$state/writers.htpasswd"
    user=""
    # Started as root, nginx would hand its workers to www-data, who cannot write the store.
    if [[ $(id -u) -eq 0 ]]; then user="user $(id -un) $(id -gn);"; fi
    listen=$addr
    if [[ "$addr" == *:* ]]; then listen="[$addr]"; fi
    sed -e "s|@USER@|$user|" -e "s|@STATE@|$state|g" -e "s|@STORE@|$store|g" \
        -e "s|@ADDR@|$listen|" -e "s|@PORT@|$port|" -e "s|@MAX_BODY@|$max_body|" \
        "$here/nginx.conf.in" >"$state/nginx.conf"
    url="http://$listen:$port"
    echo "$url" >"$state/url"
    if ! out=$("$nginx" -q -p "$state" -e "$state/error.log" -c "$state/nginx.conf" 2>&1); then
      tail -n 2 <<<"$out" >&2
      die 4 "nginx did not start on $addr:$port (config $state/nginx.conf)"
    fi
    # Any HTTP answer (404 for a blob nobody wrote) means it serves.
    for _ in $(seq 50); do
      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url/ac/$(printf '0%.0s' {1..64})" || true)
      if [[ "$code" == 404 ]]; then
        echo "remote_cache: serving $store at $url (pid $(pid_of_running), logs in $state)" >&2
        echo "$url"
        exit 0
      fi
      sleep 0.1
    done
    die 4 "nginx started but $url does not answer (logs in $state)"
    ;;
esac
