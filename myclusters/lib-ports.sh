# Sourced by local-cluster.sh and devenv.sh (bash).

free_ports() { # free_ports COUNT -> COUNT distinct ports free on 127.0.0.1 right now
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
    else
        # Fallback: scan a random window of the non-ephemeral high range for ports
        # nobody listens on.
        local want=$1 p out=() start=$((20000 + RANDOM % 20000))
        for ((p = start; p < start + 2000 && ${#out[@]} < want; p++)); do
            if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then out+=("$p"); fi
        done
        [ "${#out[@]}" -eq "$want" ] || return 1
        echo "${out[*]}"
    fi
}
