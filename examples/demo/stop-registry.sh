#!/usr/bin/env bash
# Stop the registry examples/demo/up.sh started (its data stays in the cache directory).
cache="${XDG_CACHE_HOME:-$HOME/.cache}/cloudflow-demo"
if [ -f "$cache/registry.pid" ] && kill "$(cat "$cache/registry.pid")" 2>/dev/null; then
  echo "demo: registry stopped"
fi
rm -f "$cache/registry.pid"
