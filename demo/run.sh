#!/usr/bin/env bash
# demo/run.sh: run demo/opaque_client under HERMES with policies/demo.lua.
#
# Builds hermes and the preload, compiles the demo C programs into target/demo/,
# starts demo/listener on a free 127.0.0.1 port, runs the client under
# `hermes launch -v`, and summarises the trace. Exits with the client's status.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=target/demo
trace=$out/trace.jsonl

cargo build --quiet -p hermes-launcher -p hermes-preload
mkdir -p "$out"
gcc -O1 -Wall -Wextra -o "$out/opaque_client" demo/opaque_client.c
gcc -O1 -Wall -Wextra -o "$out/listener" demo/listener.c

# true if something accepts TCP connections on 127.0.0.1:$1
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# PORT for the listener; PORT+1 must be free too (the client connects there and
# the policy redirects it to PORT).
port=""
base=$((20000 + RANDOM % 30000))
for ((p = base; p < base + 200; p += 2)); do
    if ! listening "$p" && ! listening "$((p + 1))"; then
        port=$p
        break
    fi
done
[[ -n $port ]] || { echo "run.sh: no free port pair found near $base" >&2; exit 1; }

"$out/listener" "$port" 1 >"$out/listener.log" 2>&1 &
listener_pid=$!
trap 'kill "$listener_pid" 2>/dev/null || true' EXIT

for _ in $(seq 50); do
    grep -q listening "$out/listener.log" && break
    kill -0 "$listener_pid" 2>/dev/null || break
    sleep 0.1
done
grep -q listening "$out/listener.log" || {
    echo "run.sh: listener did not start:" >&2
    cat "$out/listener.log" >&2
    exit 1
}

rm -f "$trace"
status=0
HERMES_DEMO_PORT=$port target/debug/hermes launch -v \
    --policy policies/demo.lua --trace "$trace" \
    -- "$out/opaque_client" "$port" || status=$?

echo
echo "trace: $trace"
if [[ -s $trace ]]; then
    printf 'decisions:'
    grep -o '"decision":"[a-z]*"' "$trace" | cut -d'"' -f4 | sort | uniq -c |
        awk '{ printf "%s %d %s", (NR > 1 ? "," : ""), $1, $2 } END { print "" }'
fi
exit "$status"
