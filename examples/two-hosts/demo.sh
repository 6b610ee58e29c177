#!/usr/bin/env bash
# `make demo`: two hosts on loopback, a chat room on each. The room on host B joins the room
# on host A over QUIC; then what ann types into room "a" on host A is printed for bea in
# room "b" on host B, and what bea types is printed for ann.
#
# To chat by hand instead, run the two hosts (`wasmwire run a.toml`, `wasmwire run b.toml`),
# join the rooms as below, and in two terminals:
#   wasmwire send 127.0.0.1:7501 room say - --name ann
#   wasmwire send 127.0.0.1:7502 room say - --name bea
set -euo pipefail
cd "$(dirname "$0")"
W=${WASMWIRE:-../../target/release/wasmwire}
logs=$(mktemp -d)
"$W" run a.toml 2>"$logs/a.log" &
A=$!
"$W" run b.toml 2>"$logs/b.log" &
B=$!
stop() {
    kill -INT "$A" "$B" 2>/dev/null || true
    wait "$A" "$B" 2>/dev/null || true
    echo "(host logs: $logs)"
}
trap stop EXIT

# Wait until B has connected to A.
for _ in $(seq 100); do
    if "$W" peers 127.0.0.1:7502 --json 2>/dev/null | grep -q '"connected": true'; then
        break
    fi
    sleep 0.1
done
A_ID=$("$W" id .wasmwire/a.key)
echo "host A listens on 127.0.0.1:7501 as $A_ID"
echo "host B listens on 127.0.0.1:7502 as $("$W" id .wasmwire/b.key)"
echo
# Chain the rooms: the room on B opens a session to the room on A.
"$W" call 127.0.0.1:7502 room join "{\"service\":\"room\",\"peer\":\"$A_ID\"}" >/dev/null
"$W" services 127.0.0.1:7501
echo

# `said {"room":"a","from":"ann","text":"hi",...}` -> `ann (room a): hi`
show() {
    sed -u -E "s/^said \{\"room\":\"([^\"]*)\",\"from\":\"([^\"]*)\",\"text\":\"([^\"]*)\".*$/$1 sees  \2 (room \1): \3/"
}
# Waits until NAME is a member of the room at ADDR (a chat room keeps no history, so a
# line sent before someone joins is not shown to them).
member() {
    for _ in $(seq 100); do
        if "$W" call "$1" room members 2>/dev/null | grep -q "\"$2\""; then
            return 0
        fi
        sleep 0.05
    done
    echo "$2 did not join the room at $1" >&2
    return 1
}
{ member 127.0.0.1:7501 ann; echo "hi ann, bea here on host B"; sleep 1.5; } |
    "$W" send 127.0.0.1:7502 room say - --name bea --wait 500ms | show "bea on host B" &
BEA=$!
member 127.0.0.1:7502 bea
{ echo "hello from host A"; sleep 0.6; echo "can you read me on B?"; sleep 1.2; } |
    "$W" send 127.0.0.1:7501 room say - --name ann --wait 500ms | show "ann on host A"
wait "$BEA"
