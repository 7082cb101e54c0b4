#!/usr/bin/env bash
# Before a release (or after changing a pin): what the cluster path needs from outside this repo still
# exists and still fits. Each check prints PASS, FAIL or SKIP with its reason; a SKIP is a check this
# machine cannot make (no network, no docker, no kind), never a pass. Exit 1 if any check FAILs.
#
#   bash benchmarks/release_check.sh
#
# Needs, for every check to run: network access to Docker Hub and download.pytorch.org, `docker`
# (manifest inspect), `kind` + `kubectl` + `helm` (a throwaway cluster for the server-side dry run).
# Offline, only the README's shell blocks are checked (CI runs it so: tests/test_cluster.py).
set -u
cd "$(dirname "$0")/.."
failed=0
pass() { echo "PASS  $1"; }
fail() { echo "FAIL  $1"; failed=1; }
skip() { echo "SKIP  $1"; }

base=$(sed -n 's/^FROM \(rayproject\/ray:[^ ]*\)$/\1/p' k8s/Dockerfile)
pins=$(sed -n 's/.*pip install --no-cache-dir \(torch==[^ ]* torchvision==[^ ]*\).*/\1/p' k8s/Dockerfile)
index=$(sed -n 's/.*--index-url \(https:\/\/download.pytorch.org\/whl\/[a-z0-9]*\).*/\1/p' k8s/Dockerfile)
kuberay=$(sed -n 's/.*helm install kuberay-operator kuberay\/kuberay-operator --version \([0-9.]*\).*/\1/p' README.md)
# a pin that cannot be read is a failure, not a check skipped (helm --version "" installs the latest)
for name in base pins index kuberay; do
  if [ -z "${!name}" ]; then fail "could not read $name from k8s/Dockerfile or README.md"; fi
done
reachable() {   # any HTTP answer (Docker Hub's registry answers 401 to anonymous requests): the network works
  [ "$(timeout 15 curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" != "000" ]
}

# 1. the base image tag exists (Docker Hub)
if [ -z "$base" ]; then :
elif ! command -v docker > /dev/null || ! reachable https://registry-1.docker.io/v2/; then
  skip "base image $base (no docker, or Docker Hub unreachable)"
elif timeout 60 docker manifest inspect "$base" > /dev/null 2>&1; then
  pass "base image $base exists"
else
  fail "base image $base: docker manifest inspect found no such tag"
fi

# 2. the CUDA wheel index carries the pinned torch and torchvision
py=$(sed -n 's/^FROM rayproject\/ray:[^-]*-py\([0-9]*\)-.*/cp\1/p' k8s/Dockerfile)   # the image's Python, e.g. cp311
if [ -z "$index" ] || [ -z "$pins" ]; then :
elif ! reachable "$index/"; then
  skip "wheel index $index (unreachable)"
else
  for pin in $pins; do
    name=${pin%%==*}; version=${pin##*==}; cu=${index##*/}
    if timeout 60 curl -sf "$index/$name/" | grep -q "$name-$version+$cu-$py-$py-.*linux_x86_64"; then
      pass "$index carries $name $version+$cu for $py linux_x86_64"
    else
      fail "$index has no $name $version+$cu wheel for $py linux_x86_64"
    fi
  done
fi

# 3. the RayJob manifest through a real KubeRay's admission (server-side dry run on a kind cluster)
if [ -z "$kuberay" ]; then :
elif command -v kind > /dev/null && command -v kubectl > /dev/null && command -v helm > /dev/null; then
  cluster=noisesink-release-check
  if kind create cluster --name "$cluster" > /dev/null 2>&1 \
     && helm repo add kuberay https://ray-project.github.io/kuberay-helm/ > /dev/null 2>&1 \
     && helm install kuberay-operator kuberay/kuberay-operator --version "$kuberay" --wait > /dev/null 2>&1; then
    kubectl apply --dry-run=server -f k8s/serviceaccount.yaml > /dev/null \
      && kubectl apply --dry-run=server -f k8s/rayjob.yaml > /dev/null \
      && pass "k8s/rayjob.yaml passes KubeRay $kuberay's CRD schema (server-side dry run; not the controller's own checks)" \
      || fail "k8s/rayjob.yaml refused by KubeRay $kuberay"
  else
    skip "KubeRay dry run (could not create the kind cluster or install the operator $kuberay)"
  fi
  kind delete cluster --name "$cluster" > /dev/null 2>&1
else
  skip "KubeRay dry run (needs kind, kubectl and helm)"
fi

# 4. every shell block of README.md parses (bash -n), line continuations included
shopt -s nullglob
blocks=$(mktemp -d)
awk -v dir="$blocks" '/^```bash$/ {n++; inside=1; next} /^```$/ {inside=0} inside {print > (dir "/" n ".sh")}' README.md
n=0; bad=0
for f in "$blocks"/*.sh; do
  n=$((n + 1))
  if ! err=$(bash -n "$f" 2>&1); then bad=1; echo "      README block $(basename "$f" .sh): $err"; fi
done
rm -rf "$blocks"
if [ "$n" -eq 0 ]; then fail "README.md has no bash block"
elif [ "$bad" -eq 0 ]; then pass "README.md: all $n bash blocks parse"
else fail "README.md: a bash block does not parse"; fi

exit $failed
