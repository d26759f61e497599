#!/usr/bin/env bash
# `make image`: build the Dockerfile into an OCI image without a Docker engine, and
# save it as archives that `podman load` and `docker load` accept.
#
# No base image can be pulled here (only package registries are reachable), so the base
# is a Debian root filesystem made with mmdebstrap (python3, python3-venv, CA
# certificates), imported as localhost/wsop-base:<suite>. buildah then builds the same
# Dockerfile that `docker build .` uses elsewhere, with BASE pointing at it and RUN steps
# isolated by chroot (this machine's container runtime cannot start containers: see
# image/check.sh). pip inside the build reaches PyPI like the host does: the host's CA
# bundle is mounted (read-only, for RUN steps only; it is not part of the image).
#
# Outputs: dist/wsop-<version>.oci.tar (OCI archive) and dist/wsop-<version>.docker.tar
# (docker-archive, for Docker engines older than 25), both tagged $IMAGE.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
IMAGE=${IMAGE:-localhost/wsop:$VERSION}
SUITE=${SUITE:-bookworm}
BASE_IMAGE=${BASE_IMAGE:-localhost/wsop-base:$SUITE}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
DIST=${DIST:-dist}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need=(buildah podman mmdebstrap)
missing=()
for tool in "${need[@]}"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if ((${#missing[@]})); then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing ${missing[*]} (and skopeo, umoci) with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah podman mmdebstrap skopeo umoci \
      >/dev/null
  else
    die "missing ${missing[*]}: install them (Debian: apt-get install buildah podman mmdebstrap)"
  fi
fi
[ "$(id -u)" = 0 ] || die "run as root: buildah's chroot isolation and mmdebstrap need it here"

if podman image exists "$BASE_IMAGE"; then
  say "base $BASE_IMAGE already built (podman rmi it to rebuild)"
else
  say "building the base $BASE_IMAGE with mmdebstrap ($SUITE, minbase + python3)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mmdebstrap --variant=minbase --mode=root \
    --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --aptopt='Acquire::Retries "3"' \
    "$SUITE" "$work/base.tar" \
    "deb $MIRROR $SUITE main" \
    "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY_MIRROR $SUITE-security main" </dev/null
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    "$work/base.tar" "$BASE_IMAGE" >/dev/null
  rm -rf "$work"
  trap - EXIT
fi

say "building $IMAGE from the Dockerfile (buildah, chroot isolation)"
mounts=()
[ -f "$CA_BUNDLE" ] && mounts+=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
buildah build --isolation chroot --network host --layers --format oci \
  --build-arg "BASE=$BASE_IMAGE" "${mounts[@]}" \
  --tag "$IMAGE" --file Dockerfile . >&2

mkdir -p "$DIST"
oci="$DIST/wsop-$VERSION.oci.tar"
docker_tar="$DIST/wsop-$VERSION.docker.tar"
rm -f "$oci" "$docker_tar"
say "saving $oci (OCI archive) and $docker_tar (docker-archive)"
podman save --quiet --format oci-archive --output "$oci" "$IMAGE"
podman save --quiet --format docker-archive --output "$docker_tar" "$IMAGE"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE ($((size / 1024 / 1024)) MiB): $oci, $docker_tar"
echo "$IMAGE"
