# Shared by the bench scripts; sourced, not run.

# Prints the address a coordinator started with `--log-format json` logs once
# it listens, polling its log (up to a minute); fails if the coordinator ($2)
# exits first or never listens.
listening_addr() {
    local log=$1 pid=$2 addr
    for _ in $(seq 600); do
        addr=$(sed -n 's/.*"message":"listening","addr":"\([^"]*\)".*/\1/p' "$log")
        if [[ -n "$addr" ]]; then
            echo "$addr"
            return
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "the coordinator exited before listening; its log: $log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "the coordinator did not listen within a minute; its log: $log" >&2
    return 1
}
