#!/usr/bin/env bash
# Makes a Debian machine (bookworm, as root, no registry but Debian's mirror)
# able to run compose.yaml with podman: installs the engine, configures it
# for a machine without systemd or ulimit rights, and builds the base image
# that deploy/Dockerfile takes as BASE instead of pulling debian:bookworm-slim.
# Each step is skipped when done already, so it is cheap to run again.
# tests/integration/containers.rs needs it; .ci/run calls it.
#   deploy/compose/local-engine.sh
# Then (see deploy/Dockerfile for the `prebuilt` target):
#   podman build -f deploy/Dockerfile --target prebuilt --build-arg BASE=localhost/lazyavg-base:bookworm ...
set -euo pipefail

BASE_IMAGE=${LAZYAVG_BASE_IMAGE:-localhost/lazyavg-base:bookworm}
# The rootfs tarball is kept, so a machine whose images were wiped imports it
# again without downloading; under target/ it goes where cargo's output goes.
CACHE_DIR=${LAZYAVG_ENGINE_CACHE:-$(cd "$(dirname "$0")/../.." && pwd)/target/container-base}

say() { echo "local-engine.sh: $*"; }

if ((EUID != 0)); then
    say "must run as root (it installs packages; rootless podman needs subuid ranges set up by hand)" >&2
    exit 1
fi

# podman 4.3 and its helpers: runc as the runtime, netavark and aardvark-dns
# for the compose network and its service names (`coordinator`), mmdebstrap
# for the base image; uidmap, slirp4netns and fuse-overlayfs are what podman
# recommends and picks up when it runs rootless or without native overlay.
packages=(podman podman-compose runc netavark aardvark-dns uidmap slirp4netns fuse-overlayfs mmdebstrap)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
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
    say "writing $conf"
    mkdir -p "$(dirname "$conf")"
    printf '%s\n' "$wanted" >"$conf"
fi

# The base: Debian's essential packages plus apt (the Dockerfile installs
# with apt-get), the same content as debian:bookworm-slim.
if ! podman image exists "$BASE_IMAGE"; then
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

say "podman $(podman version --format '{{.Client.Version}}') is ready; base image $BASE_IMAGE"
