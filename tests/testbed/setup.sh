#!/usr/bin/env bash
# Sets up the test bed every weir test runs against: kube-apiserver, etcd and helm built
# from the Go module in ./go at the versions in ./versions.env, Istio's and Gateway API's
# CRDs taken from the same module graph, the Prometheus Operator's ServiceMonitor CRD
# from its module, Flagger (the scale benchmark's comparison) and its CRDs from its own
# module, and Debian packages the tests start per run (Prometheus, nginx, chromium). Idempotent: a warm
# run only checks a stamp and takes seconds.
#
# Installs into ${WEIR_TESTBED_DIR:-${WEIR_CACHE:-$HOME/.cache/weir}/testbed/<versions>}
# and writes testbed.env there; the weir-testbed harness finds the same directory.
# `setup.sh --dir` only prints that directory.
set -euo pipefail

started=$(date +%s)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
gomod="$here/go"

# shellcheck source=versions.env
source "$here/versions.env"
name="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_istio-${ISTIO_API_VERSION}_gwapi-${GATEWAY_API_VERSION}"
dir="${WEIR_TESTBED_DIR:-${WEIR_CACHE:-$HOME/.cache/weir}/testbed/$name}"
stamp="$dir/.complete"
if [[ "${1:-}" == --dir ]]; then
    echo "$dir"
    exit 0
fi

say() { printf 'testbed: %s\n' "$*"; }
fail() { printf 'testbed: error: %s\n' "$*" >&2; exit 1; }

# Everything that decides what gets built; a change to any of it rebuilds.
inputs_digest() {
    (
        cd "$here"
        cat versions.env setup.sh go/go.mod go/go.sum
        find go -name '*.go' -print0 | sort -z | xargs -0 cat
    ) | sha256sum | cut -d' ' -f1
}

# Fails when go.mod requires another version than versions.env names.
check_pins() {
    local module want got
    while read -r module want; do
        got=$(cd "$gomod" && go list -m -f '{{.Version}}' "$module")
        [[ "$got" == "$want" ]] ||
            fail "go/go.mod requires $module $got but versions.env says $want: make them agree"
    done <<EOF
k8s.io/kubernetes $KUBERNETES_VERSION
go.etcd.io/etcd/server/v3 $ETCD_VERSION
helm.sh/helm/v3 $HELM_VERSION
istio.io/api $ISTIO_API_VERSION
sigs.k8s.io/gateway-api $GATEWAY_API_VERSION
EOF
}

build_control_plane() {
    command -v go >/dev/null || fail "Go is not installed: install the Go toolchain named in tests/testbed/go/go.mod"
    check_pins
    local t0 ldflags
    t0=$(date +%s)
    say "building kube-apiserver and kubectl $KUBERNETES_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION (a cold build takes minutes)"
    mkdir -p "$dir/bin"
    # One build command lets Go share work across the three binaries; an -X for a
    # package a binary does not link is ignored.
    ldflags="-s -w"
    ldflags+=" -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION"
    ldflags+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    # -trimpath keeps module-cache paths out of the build cache's keys: a build from a
    # fresh module cache (CI's fresh-machine check) then reuses a warm GOCACHE.
    (cd "$gomod" && go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$dir/bin/" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl ./cmd/etcd \
        helm.sh/helm/v3/cmd/helm)
    say "built binaries in $(($(date +%s) - t0))s"
}

# Flagger is built from its own module graph, not go/go.mod's: it requires client-go
# v0.27, and in go/go.mod's graph k8s.io/kubernetes would pull it up to the staging
# modules of $KUBERNETES_VERSION, which is not the Flagger its release built. Its go.mod
# has no replace directives, so `go install <package>@<version>` builds it exactly as its
# go.mod and go.sum pin it (and downloads what it needs on a fresh machine).
build_flagger() {
    local t0 scratch package="github.com/fluxcd/flagger/cmd/flagger@$FLAGGER_VERSION"
    local command="go install -trimpath -buildvcs=false -ldflags '-s -w' $package"
    t0=$(date +%s)
    say "building flagger $FLAGGER_VERSION"
    mkdir -p "$dir/bin"
    # `go install <package>@<version>` ignores the current module; run it outside one
    # anyway, with GOFLAGS set here rather than taken from the caller (-mod=vendor breaks it).
    scratch=$(mktemp -d)
    (cd "$scratch" && GOBIN="$dir/bin" GOFLAGS=-mod=mod \
        go install -trimpath -buildvcs=false -ldflags "-s -w" "$package") ||
        fail "building Flagger failed: $command (GOBIN=$dir/bin) exited non-zero"
    rmdir "$scratch"
    [[ -x "$dir/bin/flagger" ]] || fail "$command did not install $dir/bin/flagger"
    say "built flagger in $(($(date +%s) - t0))s"
}

# The directory of a module in go/go.mod's graph whose files (not packages) the test bed
# reads. `go build` downloads only the modules it compiles, and `go list -m` prints an
# empty directory for a module that is in the graph but not in the module cache, so
# download it first, and refuse an empty answer.
graph_module_dir() {
    local module=$1 dir
    (cd "$gomod" && go mod download "$module") ||
        fail "could not download Go module $module: run (cd tests/testbed/go && go mod download $module)"
    dir=$(cd "$gomod" && go list -m -f '{{.Dir}}' "$module")
    [[ -n "$dir" && -d "$dir" ]] ||
        fail "Go module $module is not in the module cache ($(go env GOMODCACHE)): run (cd tests/testbed/go && go mod download $module)"
    echo "$dir"
}

# The directory of a module version outside go/go.mod's graph, downloaded if needed.
downloaded_module_dir() {
    local module=$1 version=$2 scratch dir
    scratch=$(mktemp -d)
    (cd "$scratch" && go mod download "$module@$version") ||
        fail "could not download Go module $module@$version: run (cd \$(mktemp -d) && go mod download $module@$version)"
    rmdir "$scratch"
    dir="$(go env GOMODCACHE)/$module@$version"
    [[ -d "$dir" ]] ||
        fail "Go module $module@$version is not in the module cache ($dir): run (cd \$(mktemp -d) && go mod download $module@$version)"
    echo "$dir"
}

copy_crds() {
    local istio gwapi operator flagger file
    istio=$(graph_module_dir istio.io/api)
    gwapi=$(graph_module_dir sigs.k8s.io/gateway-api)
    operator=$(downloaded_module_dir github.com/prometheus-operator/prometheus-operator \
        "$PROMETHEUS_OPERATOR_VERSION")
    flagger=$(downloaded_module_dir github.com/fluxcd/flagger "$FLAGGER_VERSION")
    rm -rf "$dir/crds"
    mkdir -p "$dir/crds/istio" "$dir/crds/gateway-api" "$dir/crds/prometheus-operator" \
        "$dir/crds/flagger"
    cp "$istio/kubernetes/customresourcedefinitions.gen.yaml" "$dir/crds/istio/"
    for file in "$gwapi"/config/crd/standard/*.yaml; do
        # The standard channel also ships a ValidatingAdmissionPolicy; only CRDs go in.
        grep -q '^kind: CustomResourceDefinition' "$file" && cp "$file" "$dir/crds/gateway-api/"
    done
    # Not installed into every test's apiserver: only the chart's test needs it.
    cp "$operator/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
        "$dir/crds/prometheus-operator/"
    # Installed only for the scale benchmark's Flagger run (Canary, MetricTemplate,
    # AlertProvider).
    cp "$flagger/artifacts/flagger/crd.yaml" "$dir/crds/flagger/"
    chmod -R u+w "$dir/crds"
    say "copied $(ls "$dir/crds/istio" "$dir/crds/gateway-api" "$dir/crds/prometheus-operator" "$dir/crds/flagger" | grep -c yaml) CRD files"
}

apt_updated=false
# Installs a Debian package when its command is missing from PATH.
ensure_debian_package() {
    local command=$1 package=$2 sudo="" created_policy=false
    command -v "$command" >/dev/null && return 0
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    say "installing Debian package $package"
    if ! $apt_updated; then
        $sudo apt-get update -qq
        apt_updated=true
    fi
    # Tests start their own server per run; a system service must not start from postinst.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod +x /usr/sbin/policy-rc.d
        created_policy=true
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$package" >/dev/null
    if $created_policy; then $sudo rm -f /usr/sbin/policy-rc.d; fi
    if [[ -x /etc/init.d/$package ]] && $sudo /etc/init.d/"$package" status >/dev/null 2>&1; then
        $sudo /etc/init.d/"$package" stop >/dev/null || true
    fi
    command -v "$command" >/dev/null || fail "installed $package but '$command' is still not on PATH"
}

digest=$(inputs_digest)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$digest" ]]; then
    say "binaries and CRDs up to date in $dir"
else
    rm -f "$stamp"
    build_control_plane
    build_flagger
    copy_crds
    echo "$digest" >"$stamp"
fi

# Debian packages the tests start themselves, one per line: command, package.
# (Later test bed pieces are added here the same way.)
ensure_debian_package prometheus prometheus
# nginx: the reverse proxy the analysis tests put in front of Prometheus to stand for
# Grafana Mimir's gateway (path prefix, tenant header, bearer token, TLS).
ensure_debian_package nginx nginx
# A real browser for the dashboard's tests: headless chromium, driven over WebDriver.
ensure_debian_package chromium chromium
ensure_debian_package chromedriver chromium-driver

cat >"$dir/testbed.env" <<EOF
WEIR_TESTBED_DIR=$dir
KUBE_APISERVER=$dir/bin/kube-apiserver
ETCD=$dir/bin/etcd
HELM=$dir/bin/helm
KUBECTL=$dir/bin/kubectl
FLAGGER=$dir/bin/flagger
PROMETHEUS=$(command -v prometheus)
NGINX=$(command -v nginx)
CHROMIUM=$(command -v chromium)
CHROMEDRIVER=$(command -v chromedriver)
EOF

say "kube-apiserver $("$dir/bin/kube-apiserver" --version | cut -d' ' -f2)," \
    "etcd $("$dir/bin/etcd" --version | sed -n 's/^etcd Version: //p')," \
    "helm $("$dir/bin/helm" version --short)," \
    "flagger $("$dir/bin/flagger" -version | awk '{print $3}')," \
    "prometheus $(prometheus --version 2>&1 | sed -n 's/^prometheus, version \([^ ]*\).*/\1/p')"
say "ready in $(($(date +%s) - started))s: $dir (see testbed.env)"
