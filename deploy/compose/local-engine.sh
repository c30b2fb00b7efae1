#!/usr/bin/env bash
# Makes a Debian machine (bookworm, as root, no registry but Debian's mirror)
# able to run compose.yaml with podman: installs the engine, configures it
# for a machine without systemd or ulimit rights, and builds the base image
# that deploy/Dockerfile takes as BASE instead of pulling debian:bookworm-slim.
# Each step is skipped when done already, so it is cheap to run again. It
# ends by checking the engine with a build that runs a command and a
# container on a network of its own, so a missing piece fails here, named,
# not inside a test.
# tests/integration/containers.rs needs it; .ci/run calls it.
#   deploy/compose/local-engine.sh          install, configure, check
#   deploy/compose/local-engine.sh --check  only check (installs nothing)
# Then (see deploy/Dockerfile for the `prebuilt` target):
#   podman build -f deploy/Dockerfile --target prebuilt --build-arg BASE=localhost/lazyavg-base:bookworm ...
set -euo pipefail

BASE_IMAGE=${LAZYAVG_BASE_IMAGE:-localhost/lazyavg-base:bookworm}
# The rootfs tarball is kept, so a machine whose images were wiped imports it
# again without downloading; under target/ it goes where cargo's output goes.
CACHE_DIR=${LAZYAVG_ENGINE_CACHE:-$(cd "$(dirname "$0")/../.." && pwd)/target/container-base}

say() { echo "local-engine.sh: $*"; }
fail() {
    say "$*" >&2
    exit 1
}

check_only=false
case ${1:-} in
"") ;;
--check) check_only=true ;;
*) fail "unknown argument ${1@Q} (the only one is --check)" ;;
esac

if ((EUID != 0)); then
    say "must run as root (it installs packages; rootless podman needs subuid ranges set up by hand)" >&2
    exit 1
fi

# podman 4.3 and its helpers: runc as the runtime, netavark and aardvark-dns
# for the compose network and its service names (`coordinator`), and
# iptables, through which netavark 1.4 sets up every container's network
# (a build's RUN steps included; podman only suggests it, so without it
# every RUN fails with "netavark: No such file or directory"); mmdebstrap
# for the base image; uidmap, slirp4netns and fuse-overlayfs are what podman
# recommends and picks up when it runs rootless or without native overlay.
packages=(podman podman-compose runc netavark aardvark-dns iptables uidmap slirp4netns fuse-overlayfs mmdebstrap)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if $check_only && ((${#missing[@]})); then
    fail "the engine is not ready: package ${missing[*]} not installed (run $0 without --check, or apt-get install ${missing[*]})"
fi
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Without systemd the cgroups are managed by hand (cgroupfs); a container may
# not raise its limits above those of a machine that is itself a container,
# so the engine's default ulimits are dropped (runc: "error setting rlimits").
conf=/etc/containers/containers.conf.d/lazyavg.conf
wanted='[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"'
if [[ ! -f $conf || $(<"$conf") != "$wanted" ]]; then
    $check_only && fail "the engine is not ready: $conf is missing or differs (run $0 without --check)"
    say "writing $conf"
    mkdir -p "$(dirname "$conf")"
    printf '%s\n' "$wanted" >"$conf"
fi

# The base: Debian's essential packages plus apt (the Dockerfile installs
# with apt-get), the same content as debian:bookworm-slim.
if ! podman image exists "$BASE_IMAGE"; then
    $check_only && fail "the engine is not ready: no base image $BASE_IMAGE (run $0 without --check)"
    tarball=$CACHE_DIR/bookworm-apt.tar
    if [[ ! -f $tarball ]]; then
        say "building $tarball with mmdebstrap"
        mkdir -p "$CACHE_DIR"
        mmdebstrap --quiet --variant=apt --format=tar bookworm "$tarball.partial"
        mv "$tarball.partial" "$tarball"
    fi
    say "importing $tarball as $BASE_IMAGE"
    podman import --quiet "$tarball" "$BASE_IMAGE" >/dev/null
fi

# The check: the programs podman runs for a build and for a compose network,
# each named by the package that brings it, then a build whose RUN step runs
# a command and a container on a network with DNS, as compose makes one.
helpers=(
    "iptables:iptables"
    "/usr/lib/podman/netavark:netavark"
    "/usr/lib/podman/aardvark-dns:aardvark-dns"
    "runc:runc"
    "conmon:conmon"
)
for helper in "${helpers[@]}"; do
    program=${helper%%:*} package=${helper##*:}
    command -v "$program" >/dev/null ||
        fail "the engine cannot run containers: $program is missing (apt-get install $package)"
done
check_dir=$(mktemp -d)
check_network=lazyavg-engine-check-$$
cleanup() {
    rm -rf "$check_dir"
    podman network rm --force "$check_network" >/dev/null 2>&1 || true
}
trap cleanup EXIT
# The first line of podman's error says what failed; the rest is its trace.
first_error() { grep -m1 -E 'Error|error' <<<"$1" || head -n1 <<<"$1"; }
printf 'FROM %s\nRUN true\n' "$BASE_IMAGE" >"$check_dir/Containerfile"
if ! out=$(podman build --quiet --no-cache --pull=never -f "$check_dir/Containerfile" -t lazyavg-engine-check "$check_dir" 2>&1); then
    fail "the engine check failed: a build cannot run a RUN step: $(first_error "$out")"
fi
podman rmi --force lazyavg-engine-check >/dev/null 2>&1 || true
if ! out=$(podman network create "$check_network" 2>&1 &&
    podman run --rm --network "$check_network" "$BASE_IMAGE" true 2>&1); then
    fail "the engine check failed: a container cannot run on a network of its own: $(first_error "$out")"
fi

say "podman $(podman version --format '{{.Client.Version}}') is ready; base image $BASE_IMAGE"
