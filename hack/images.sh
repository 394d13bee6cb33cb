#!/usr/bin/env bash
# Builds FROM scratch images of meshca's binaries. No image can be pulled here, so each image
# is a staged root filesystem: the static agent and meshctl as they are, meshca-server (cgo,
# for PKCS#11) with the shared libraries it and the SoftHSM2 module need, found with ldd.
#
#   hack/images.sh            # images meshca/<binary>:dev from bin/ (make build)
#   BIN=dir TAG=t hack/images.sh
#
# Environment: BIN (where the binaries are, default bin), TAG (image tag, default dev),
# SOFTHSM_MODULE (the PKCS#11 module to add; found in Debian's and Ubuntu's paths by default).
# Images carry the label org.meshca.image; the untagged ones a rebuild leaves behind are
# pruned. Every image has /etc/meshca for its config, /data for a data dir and a sticky /tmp; the
# entry point is the binary, so `docker run IMAGE -help` prints its flags.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
TAG=${TAG:-dev}
SOFTHSM_MODULE=${SOFTHSM_MODULE:-}
if [ -z "$SOFTHSM_MODULE" ]; then
  for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so; do
    [ -f "$m" ] && SOFTHSM_MODULE=$m && break
  done
fi
# The legacy builder: buildx is not installed here, and FROM scratch needs nothing else.
export DOCKER_BUILDKIT=0

for name in meshca-server meshca-agent meshctl; do
  if [ ! -x "$BIN/$name" ]; then
    echo "images: $BIN/$name is missing; run make build (or set BIN)" >&2
    exit 1
  fi
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# copy_libs FILE ROOT: every shared library ldd names for FILE (the dynamic loader included),
# at the same path under ROOT, symlinks resolved.
copy_libs() {
  local file=$1 root=$2 lib
  ldd "$file" | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}' | while read -r lib; do
    [ -e "$root$lib" ] && continue
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
}

# build_image NAME ROOT: meshca/NAME:TAG from the staged root filesystem ROOT.
build_image() {
  local name=$1 root=$2 ctx=$stage/ctx-$1
  mkdir -p "$root/tmp" "$root/data" "$root/etc/meshca"
  chmod 1777 "$root/tmp"
  mkdir -p "$ctx"
  mv "$root" "$ctx/rootfs"
  cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
ENV TMPDIR=/tmp
LABEL org.opencontainers.image.title="$name" org.meshca.image="$name"
ENTRYPOINT ["/usr/local/bin/$name"]
DOCKERFILE
  if ! out=$(docker build -q -t "meshca/$name:$TAG" "$ctx" 2>&1); then
    echo "$out" >&2
    echo "images: docker build meshca/$name:$TAG failed" >&2
    exit 1
  fi
  echo "built meshca/$name:$TAG"
}

for name in meshca-agent meshctl; do
  if ldd "$BIN/$name" >/dev/null 2>&1; then
    echo "images: $BIN/$name is not static; build it with CGO_ENABLED=0" >&2
    exit 1
  fi
  root="$stage/$name"
  install -D -m 0755 "$BIN/$name" "$root/usr/local/bin/$name"
  build_image "$name" "$root"
done

root="$stage/meshca-server"
install -D -m 0755 "$BIN/meshca-server" "$root/usr/local/bin/meshca-server"
copy_libs "$(readlink -f "$BIN/meshca-server")" "$root"
if [ -n "$SOFTHSM_MODULE" ]; then
  install -D -m 0755 "$(readlink -f "$SOFTHSM_MODULE")" "$root$SOFTHSM_MODULE"
  copy_libs "$SOFTHSM_MODULE" "$root"
else
  echo "images: warning: SoftHSM2 module not found; the meshca-server image has no PKCS#11 module" >&2
fi
build_image meshca-server "$root"

# A rebuild moves the tags; drop the images it left untagged (only ours, only dangling ones).
docker image prune -f --filter label=org.meshca.image >/dev/null
