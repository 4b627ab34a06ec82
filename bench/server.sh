# Starting and stopping the servers the bench scripts measure; sourced by them. The
# server a script started is $pid (empty when none runs).

pid=""

# Stops the server $pid, if one runs.
stop_server() {
  if [[ -n "$pid" ]]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
  fi
}

# Waits for "listening on http://127.0.0.1:PORT" in $1 (its stderr in $1.err) from the
# server $pid; prints PORT. Both latentd and bench/diffusers_server.py print that line
# once their models are loaded.
wait_for_port() {
  local log="$1" port="" name
  name="$(basename "$0" .sh)"
  for _ in $(seq 1 1200); do
    port="$(sed -n 's#.*listening on http://127\.0\.0\.1:\([0-9]*\).*#\1#p' "$log" | head -n1)"
    if [[ -n "$port" ]]; then
      echo "$port"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      cat "$log" "$log.err" >&2
      echo "$name: the server exited before listening" >&2
      return 1
    fi
    sleep 0.1
  done
  cat "$log" "$log.err" >&2
  echo "$name: no port logged in 120 s" >&2
  return 1
}
