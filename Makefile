# lambda-sidecar: build, test, lint and demo. GNU make.
#
#   make demo   the sidecar in a local Lambda environment (lambda-env) with a real collector:
#               invokes fetch tokens, telemetry arrives; then a summary
#   make test   install test dependencies, build once, run every test stage
#   make lint   rustfmt and clippy, warnings as errors
#   make bench  cold start, /token req/s, sizes and per-invoke hold, beside references built from
#               source (scripts/bench/refs), with their budgets
#
# Every stage after `build` uses the one release binary, found through LAMBDA_SIDECAR_BIN: the
# static musl layer binary of this machine's architecture, the very file the layer ships.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV := $(ROOT)/.venv
# No .pytest_cache or __pycache__ left in the tree.
PYTEST := $(VENV)/bin/python -m pytest -p no:cacheprovider
export PYTHONDONTWRITEBYTECODE := 1
CARGO ?= cargo
CARGO_TARGET_DIR ?= $(ROOT)/target

# The binary every test stage and the demo run (tests/e2e.rs too): the layer binary of this
# machine's architecture (scripts/package/build.sh), so the tests run what ships and CI links
# lambda-sidecar with LTO once per architecture, not a third time for the host. Point it
# elsewhere to test another build (e.g. LAMBDA_SIDECAR_BIN=target/debug/lambda-sidecar make
# test-verifiers).
HOST_ARCH := $(if $(filter aarch64 arm64,$(shell uname -m)),arm64,x86_64)
HOST_TRIPLE := $(if $(filter arm64,$(HOST_ARCH)),aarch64,x86_64)-unknown-linux-musl
LAMBDA_SIDECAR_BIN ?= $(CARGO_TARGET_DIR)/$(HOST_TRIPLE)/release/lambda-sidecar
override LAMBDA_SIDECAR_BIN := $(abspath $(LAMBDA_SIDECAR_BIN))
export LAMBDA_SIDECAR_BIN

# The emulator (cargo lambda) and rotel-agent are installed in the venv.
export PATH := $(VENV)/bin:$(PATH)

.PHONY: deps build test test-rust test-verifiers test-lifecycle lint demo bench

deps:
	$(ROOT)/scripts/install-deps.sh

# The layer binary for this machine (a later `make layer-$(HOST_ARCH)` reuses it), and
# lambda-env, which runs on the host (bench, demo, smoke runs).
build:
	$(ROOT)/scripts/package/build.sh $(HOST_ARCH)
	$(CARGO) build --release --locked -p lambda-env --bins

# Stages run in order; `deps` and `build` run once, each stage below only tests.
test: deps build
	$(MAKE) --no-print-directory test-rust test-verifiers test-lifecycle test-example test-packaging

test-rust:
	$(CARGO) test --workspace --locked
	# gRPC export is the opt-in `grpc` feature: its tests, against a debug build with it.
	env -u LAMBDA_SIDECAR_BIN $(CARGO) test --locked -p lambda-sidecar --features grpc --lib --test e2e --test exporter -- grpc export_configuration

test-verifiers:
	$(PYTEST) -q tests/verifiers/verify_pyjwt.py
	cd tests/verifiers && node --test verify_jose.mjs

test-lifecycle:
	$(PYTEST) -q tests/verifiers/test_lifecycle_cargo_lambda.py

FAKE_RUNTIME := --manifest-path $(ROOT)/tests/verifiers/fake-runtime/Cargo.toml

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) clippy -p lambda-sidecar --all-targets --features grpc --locked -- -D warnings
	$(CARGO) fmt $(FAKE_RUNTIME) --check
	CARGO_TARGET_DIR=$(CARGO_TARGET_DIR)/lifecycle-fixture $(CARGO) clippy $(FAKE_RUNTIME) --locked -- -D warnings
	$(CARGO) fmt --manifest-path $(ROOT)/fuzz/Cargo.toml --check
	CARGO_TARGET_DIR=$(CARGO_TARGET_DIR) $(CARGO) clippy --manifest-path $(ROOT)/fuzz/Cargo.toml --locked -- -D warnings

demo: deps build
	$(ROOT)/scripts/demo.sh

bench: deps build
	$(VENV)/bin/python $(ROOT)/scripts/bench.py

# The cargo-fuzz targets in fuzz/ (see fuzz/README.md), FUZZ_SECONDS each, on the stable
# toolchain: --sanitizer none, as AddressSanitizer needs nightly (and the code under test is
# safe Rust). Inputs found along the way stay in fuzz/target/corpus; a crash is written to
# fuzz/artifacts/<target>/ and fails the run. FUZZ_BUILD=--dev (the default) builds without
# optimisation: about 3.5 min from cold instead of 10, which is what CI can afford; set it
# empty for an optimised build and a longer search.
FUZZ_SECONDS ?= 20
FUZZ_BUILD ?= --dev
FUZZ_TARGETS := telemetry_batch token_request trace_context
.PHONY: fuzz
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked --version 0.13.2
	cd $(ROOT)/fuzz && for target in $(FUZZ_TARGETS); do \
		mkdir -p target/corpus/$$target && \
		$(CARGO) fuzz run --sanitizer none $(FUZZ_BUILD) $$target target/corpus/$$target seeds/$$target -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=1024 || exit 1; \
	done

# --- packaging (issue 4) ---
# The logic lives in scripts/package/; docs/deploying.md walks through it.
#   make layer-arm64 layer-x86_64   dist/lambda-sidecar-<arch>.zip (static musl build, cargo-zigbuild)
#   make test-packaging             template lint (cfn-lint, sam validate), dashboard, zips, sam build, smoke runs of both zips
#   make test-example               examples/nodejs-function (npm test) and examples/python-function (pytest),
#                                   and docs/your-function.md's client snippets, against the real sidecar
#   make deploy                     sam build + sam deploy (--guided the first time); needs AWS credentials
#   make publish-layer              the layer alone, for your own functions (docs/your-function.md)
#   make publish-jwks               after a deploy with PublishJwks=true: the JWKS and discovery document to its bucket
.PHONY: build-arm64 build-x86_64 layer-arm64 layer-x86_64 layers packaging-deps test-packaging test-example smoke-arm64 smoke-x86_64 deploy

build-arm64 build-x86_64: build-%:
	$(ROOT)/scripts/package/build.sh $*

layer-arm64 layer-x86_64: layer-%:
	$(ROOT)/scripts/package/layer.sh $*

layers: layer-arm64 layer-x86_64

# The SAM CLI venv (.venv-sam) and qemu-user-static for the arm64 smoke test.
packaging-deps:
	APT_EXTRA="qemu-aarch64-static:qemu-user-static" $(ROOT)/scripts/install-deps.sh
	$(ROOT)/scripts/package/ensure-sam.sh

test-packaging: packaging-deps build layers
	cd tests/cdk && npm ci --no-audit --no-fund --loglevel=error
	$(PYTEST) -q tests/packaging

test-example: deps build
	cd examples/nodejs-function && npm ci --no-audit --no-fund --loglevel=error && LAMBDA_ENV_BIN=$(CARGO_TARGET_DIR)/release/lambda-env npm test
	$(PYTEST) -q examples/python-function/tests

# One layer in lambda-env (arm64 under qemu-aarch64-static); prints a summary.
smoke-arm64 smoke-x86_64: smoke-%: packaging-deps build layer-%
	$(ROOT)/scripts/package/smoke.sh $*

deploy: layers
	$(ROOT)/scripts/package/deploy.sh $(DEPLOY_ARGS)

# The layer alone in your account, for your own functions (docs/your-function.md): publishes
# dist/lambda-sidecar-<arch>.zip with the AWS CLI and prints the layer version's ARN.
#   make publish-layer LAYER_ARCH=arm64 AWS_REGION=<region> [LAYER_NAME=lambda-sidecar-arm64]
# publish-layer-zip publishes LAYER_ZIP as it is (what tests/packaging runs against moto).
LAYER_ARCH ?= $(HOST_ARCH)
LAYER_NAME ?= lambda-sidecar-$(LAYER_ARCH)
LAYER_ZIP ?= $(ROOT)/dist/lambda-sidecar-$(LAYER_ARCH).zip
.PHONY: publish-layer publish-layer-zip
publish-layer: layer-$(LAYER_ARCH)
	$(MAKE) --no-print-directory publish-layer-zip
publish-layer-zip:
	@test -n "$(AWS_REGION)" || { echo "AWS_REGION=<region> is required" >&2; exit 2; }
	aws lambda publish-layer-version --region "$(AWS_REGION)" --layer-name "$(LAYER_NAME)" \
		--description "lambda-sidecar extension (JWT issuer + Telemetry API to OTLP), $(LAYER_ARCH)" \
		--license-info Apache-2.0 --compatible-architectures "$(LAYER_ARCH)" \
		--zip-file "fileb://$(LAYER_ZIP)" --query LayerVersionArn --output text

# After a deploy with PublishJwks=true: the JWKS and the OIDC discovery document of the key the
# function signs with, written to the JwksBucket output's .well-known/, where API Gateway and
# other relying parties fetch them (docs/deploying.md, "Publishing the JWKS"). Run it with the function's
# key configuration in the environment (JWT_ALGORITHM and its key), as the sidecar reads it;
# JWT_ISSUER and JWT_JWKS_URI are set here from the bucket, as the template sets them for the
# function. The JWKS goes first, so the discovery document never names a JWKS not there yet;
# each command stops the target (exit 1) on a configuration it cannot publish from.
#   make publish-jwks JWKS_BUCKET=<JwksBucketName output> AWS_REGION=<region>
# JWKS_ISSUER must equal the stack's JwtIssuerUrl output (set it in partitions other than aws).
JWKS_ISSUER ?= https://$(JWKS_BUCKET).s3.$(AWS_REGION).amazonaws.com
.PHONY: publish-jwks
publish-jwks:
	@test -n "$(JWKS_BUCKET)" || { echo "JWKS_BUCKET=<bucket> is required: the stack's JwksBucketName output" >&2; exit 2; }
	@test -n "$(AWS_REGION)" || { echo "AWS_REGION=<region> is required: the stack's region" >&2; exit 2; }
	@test -x "$(LAMBDA_SIDECAR_BIN)" || { echo "$(LAMBDA_SIDECAR_BIN) not found: run make build" >&2; exit 2; }
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	issuer="$(JWKS_ISSUER)"; \
	export JWT_ISSUER="$$issuer" JWT_JWKS_URI="$$issuer/.well-known/jwks.json"; \
	"$(LAMBDA_SIDECAR_BIN)" jwks > "$$tmp/jwks.json"; \
	"$(LAMBDA_SIDECAR_BIN)" openid-configuration > "$$tmp/openid-configuration"; \
	for doc in jwks.json openid-configuration; do \
		aws s3 cp "$$tmp/$$doc" "s3://$(JWKS_BUCKET)/.well-known/$$doc" \
			--content-type application/json --cache-control max-age=300; \
	done; \
	echo "published: $$issuer/.well-known/openid-configuration"
