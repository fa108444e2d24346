#!/bin/sh
# Run a command in a network namespace of its own in which only the loopback interface exists, so
# every server a test starts there (the app, a Ray cluster, whose ports Ray opens on all
# interfaces) is reachable from this machine's loopback alone. Root needs no user namespace.
set -eu
if [ "$(id -u)" = 0 ]; then isolate="unshare --net"; else isolate="unshare --net --map-root-user"; fi
if $isolate true 2>/dev/null; then
    exec $isolate sh -c 'ip link set lo up && exec "$@"' sh "$@"
fi
echo "loopback.sh: cannot create a network namespace here; running without one" >&2
exec "$@"
