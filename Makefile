# weir's entry points. `make test` sets up the test bed from nothing (cached after the
# first run) and runs every test against it.

CARGO ?= cargo

.PHONY: testbed test demo release fmt lint

## Build/install the test bed: kube-apiserver, etcd, helm, CRDs, Prometheus.
testbed:
	tests/testbed/setup.sh

## Set up the test bed, run every test, then check that no test left a server running.
test: testbed
	@status=0; \
	$(CARGO) test --workspace --locked --no-fail-fast || status=$$?; \
	tests/testbed/leftovers.sh || status=1; \
	exit $$status

## A local demo of a healthy release promoted and a bad one aborted (about 2 minutes
## after the test bed is set up; WEIR_DEMO_SHORT=1 for CI's faster mode).
demo: testbed
	$(CARGO) build --locked -p weir -p weir-demo
	$(CARGO) run --locked -q -p weir-demo

## The release binary, built exactly as the Dockerfile builds it; checks that
## `weir --version` runs and that the binary stays within its 20 MB budget.
release:
	deploy/release.sh

## Check formatting.
fmt:
	$(CARGO) fmt --all --check

## Formatting and clippy, warnings denied.
lint: fmt
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
