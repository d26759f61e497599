#!/usr/bin/env bash
# `make image-check`: prove the archive `make image` wrote is an image that runs wsop.
#
# 1. `podman load` the OCI archive into a throw-away storage: the archive is loadable.
# 2. Run it. With podman when podman can start containers here; on this kind of machine
#    it cannot (crun refuses cgroup v1 + v2 "hybrid" mounts, runc cannot mount the
#    container's cgroup), so the check falls back to a chroot: the archive is unpacked
#    with umoci into a root filesystem and its entrypoint runs there as the image's
#    user (10001) with the image's environment — the same files, minus namespaces.
#    The script says which path it took.
# 3. Inside: `wsop --version`; a sidecar (`wsop sidecar`, Redis on the host's loopback)
#    answering GET /healthz; the webhook (`wsop webhook certs` + `serve`) answering
#    GET /healthz over HTTPS.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
IMAGE=${IMAGE:-localhost/wsop:$VERSION}
ARCHIVE=${ARCHIVE:-dist/wsop-$VERSION.oci.tar}
say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[ -f "$ARCHIVE" ] || die "$ARCHIVE not found: run 'make image' first"
[ "$(id -u)" = 0 ] || die "run as root (podman storage, chroot)"
for tool in podman umoci redis-server curl python3; do
  command -v "$tool" >/dev/null 2>&1 || die "missing $tool"
done

work=$(mktemp -d)
pids=()
cleanup() {
  # each server runs in its own process group (setsid): the chroot changes its user,
  # which clears a parent-death signal, so the whole group is signalled instead
  for pid in "${pids[@]}"; do kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  podman --root "$work/storage" --runroot "$work/run" rmi -a -f >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

say "podman load -i $ARCHIVE (fresh storage)"
podman --root "$work/storage" --runroot "$work/run" load -q -i "$ARCHIVE" >&2
podman --root "$work/storage" --runroot "$work/run" image exists "$IMAGE" \
  || die "the archive did not load as $IMAGE"
user=$(podman --root "$work/storage" --runroot "$work/run" image inspect --format '{{.User}}' "$IMAGE")
[ "$user" = "10001:10001" ] || die "image user is '$user', expected 10001:10001"

mode=podman
run_version() {
  exec podman --root "$work/storage" --runroot "$work/run" run --rm --network host \
    --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 "$IMAGE" --version
}
if out=$(timeout 120 bash -c "$(declare -f run_version); work=$work IMAGE=$IMAGE run_version" 2>&1); then
  say "podman ran the image: $out"
else
  mode=chroot
  say "podman cannot start containers here ($(printf '%s' "$out" | tail -1)); using a chroot"
  mkdir -p "$work/layout"
  tar -xf "$ARCHIVE" -C "$work/layout"
  ref=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["manifests"][0]; print(m.get("annotations",{}).get("org.opencontainers.image.ref.name",""))' "$work/layout/index.json")
  umoci unpack --image "$work/layout${ref:+:$ref}" "$work/bundle" >/dev/null
  rootfs="$work/bundle/rootfs"
  # the image's own environment and user, from the OCI runtime config umoci wrote
  mapfile -t envs < <(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["process"]["env"]))' "$work/bundle/config.json")
  uid=$(python3 -c 'import json,sys; u=json.load(open(sys.argv[1]))["process"]["user"]; print("%s:%s" % (u["uid"], u["gid"]))' "$work/bundle/config.json")
  [ "$uid" = "10001:10001" ] || die "unpacked user is $uid"
fi

# in_image ARGS…: exec the image's entrypoint (`wsop`) with ARGS — it replaces the shell, so
# call it in a subshell: $(…), ( … ) or with &, where $! is then its process group.
in_image() {
  exec podman --root "$work/storage" --runroot "$work/run" run --rm --network host \
    --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
    -e WSOP_ADMIN_TOKEN -e WSOP_REDIS_URL -v "$CERTS:/certs" "$IMAGE" "$@"
}
export CERTS="$work/certs" WSOP_ADMIN_TOKEN=image-check-token
mkdir -p "$work/certs"; chown 10001:10001 "$work/certs"  # the image writes as 10001
if [ "$mode" = chroot ]; then
  # bash cannot export arrays: hand the image's env over one variable per line
  export ENV_LINES; ENV_LINES=$(printf '%s\n' "${envs[@]}")
  in_image() {
    exec setsid unshare --mount --fork bash -c '
      rootfs=$1; shift
      mapfile -t ENVS <<<"$ENV_LINES"
      mount --make-rprivate /
      mount --rbind /dev "$rootfs/dev"; mount -t proc proc "$rootfs/proc"
      mkdir -p "$rootfs/certs"; mount --bind "$CERTS" "$rootfs/certs"
      exec chroot --userspec=10001:10001 "$rootfs" /usr/bin/env -i "${ENVS[@]}" \
        WSOP_ADMIN_TOKEN="$WSOP_ADMIN_TOKEN" WSOP_REDIS_URL="$WSOP_REDIS_URL" wsop "$@"
    ' _ "$rootfs" "$@"
  }
fi

say "[$mode] wsop --version"
version=$(in_image --version)
[ "$version" = "wsop $VERSION" ] || die "wsop --version printed '$version'"
say "[$mode] $version"

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  >"$work/redis.log" 2>&1 &
pids+=($!)
export WSOP_REDIS_URL="redis://127.0.0.1:$rport/0"
sport=$(free_port)
say "[$mode] wsop sidecar on 127.0.0.1:$sport (Redis on $rport)"
in_image sidecar --name s0 --host 127.0.0.1 --port "$sport" \
  --peers "s0=ws://127.0.0.1:$sport" --insecure >"$work/sidecar.log" 2>&1 &
pids+=($!)
ok=
for _ in $(seq 1 100); do
  if body=$(curl -fsS "http://127.0.0.1:$sport/healthz" 2>/dev/null); then ok=1; break; fi
  sleep 0.2
done
[ -n "$ok" ] || { cat "$work/sidecar.log" >&2; die "the sidecar never answered /healthz"; }
say "[$mode] sidecar GET /healthz: $body"

say "[$mode] wsop webhook certs + serve"
(in_image webhook certs -n wsop --out /certs --name 127.0.0.1 >/dev/null)  # a subshell: in_image execs
wport=$(free_port)
in_image webhook serve --cert /certs/tls.crt --key /certs/tls.key --host 127.0.0.1 \
  --port "$wport" >"$work/webhook.log" 2>&1 &
pids+=($!)
ok=
for _ in $(seq 1 100); do
  if body=$(curl -fsS --cacert "$work/certs/ca.crt" "https://127.0.0.1:$wport/healthz" 2>/dev/null); then
    ok=1; break
  fi
  sleep 0.2
done
[ -n "$ok" ] || { cat "$work/webhook.log" >&2; die "the webhook never answered /healthz"; }
say "[$mode] webhook GET https://127.0.0.1:$wport/healthz: $body"
echo "image-check passed ($mode): $IMAGE from $ARCHIVE runs wsop $VERSION, a sidecar and the webhook"
