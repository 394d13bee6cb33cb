# meshca build, test and run entry points. Every target installs what it needs first.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
TOOLS := $(BIN)/tools
export PATH := $(TOOLS):$(PATH)

# Pinned code generators: `make proto` reproduces the committed code byte for byte.
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
PROTOC_GEN_GO_VTPROTO_VERSION := v0.6.0
# The replicated state's messages also get vtprotobuf's generated codec: the state machine
# decodes every command on every node with it (raftstore/fsm_decode.go).
VTPROTO_FILES := meshca/v1/state.proto
VTPROTO_FEATURES := marshal+unmarshal+size+clone

APT_PACKAGES := softhsm2 opensc openssl protobuf-compiler

.PHONY: all build test unit run bench proto proto-check lint images faulttest tools clean apt-tools go-tools

all: build

## tools: install the system packages and pinned Go tools the build and tests need.
tools: apt-tools go-tools

apt-tools:
	@missing=""; \
	command -v softhsm2-util >/dev/null || missing="$$missing softhsm2"; \
	command -v pkcs11-tool >/dev/null || missing="$$missing opensc"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v protoc >/dev/null || missing="$$missing protobuf-compiler"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

go-tools: $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc $(TOOLS)/protoc-gen-go-vtproto

$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

$(TOOLS)/protoc-gen-go-vtproto:
	GOBIN=$(TOOLS) $(GO) install github.com/planetscale/vtprotobuf/cmd/protoc-gen-go-vtproto@$(PROTOC_GEN_GO_VTPROTO_VERSION)

## build: static agent and meshctl, cgo server (PKCS#11).
build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -o $(BIN)/meshca-agent ./cmd/meshca-agent
	CGO_ENABLED=0 $(GO) build -o $(BIN)/meshctl ./cmd/meshctl
	CGO_ENABLED=1 $(GO) build -o $(BIN)/meshca-server ./cmd/meshca-server
	CGO_ENABLED=0 $(GO) build -o $(BIN)/provider ./examples/provider
	CGO_ENABLED=0 $(GO) build -o $(BIN)/demo-server ./examples/demo-server
	CGO_ENABLED=0 $(GO) build -o $(BIN)/demo-client ./examples/demo-client

## proto: regenerate api/**/*.pb.go with the pinned plugins.
proto: apt-tools go-tools
	protoc --proto_path=api \
		--go_out=api --go_opt=paths=source_relative \
		--go-grpc_out=api --go-grpc_opt=paths=source_relative \
		$$(cd api && find . -name '*.proto' | sed 's|^\./||' | sort)
	protoc --proto_path=api \
		--go-vtproto_out=api --go-vtproto_opt=paths=source_relative,features=$(VTPROTO_FEATURES) \
		$(VTPROTO_FILES)

## proto-check: the committed generated code is exactly what `make proto` produces.
proto-check: apt-tools go-tools
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	protoc --proto_path=api \
		--go_out=$$tmp --go_opt=paths=source_relative \
		--go-grpc_out=$$tmp --go-grpc_opt=paths=source_relative \
		$$(cd api && find . -name '*.proto' | sed 's|^\./||' | sort); \
	protoc --proto_path=api \
		--go-vtproto_out=$$tmp --go-vtproto_opt=paths=source_relative,features=$(VTPROTO_FEATURES) \
		$(VTPROTO_FILES); \
	for f in $$(cd $$tmp && find . -name '*.go' | sort); do \
		cmp -s $$tmp/$$f api/$$f || { echo "api/$$f differs from what make proto generates; run make proto"; exit 1; }; \
	done; \
	for f in $$(cd api && find . -name '*.pb.go' | sort); do \
		[ -f $$tmp/$$f ] || { echo "api/$$f has no .proto; remove it"; exit 1; }; \
	done

## lint: gofmt and go vet.
lint:
	@bad=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...
	CGO_ENABLED=0 $(GO) vet ./...

## test: lint, the race-enabled unit tests, and the integration suites (real processes).
test: tools lint proto-check
	CGO_ENABLED=0 $(GO) build ./...
	$(GO) test -race -count=1 -timeout 20m ./...

## unit: the Go tests alone, without installing anything.
unit:
	$(GO) test -race -count=1 ./...

## bench: the benchmarks; writes bench/results.json.
bench: tools
	hack/bench.sh

## run: a local 3-node cluster, the example provider, an agent and demo workloads, in the
## foreground (Ctrl-C stops everything; data and logs stay in .dev).
run: build
	$(BIN)/meshctl dev up --dir $(CURDIR)/.dev --foreground

## images: FROM scratch images of the binaries (no registry to pull from): meshca/<binary>:dev.
images: build
	hack/images.sh

## faulttest: the container fault tests alone, Docker required. They build their images from
## this tree with hack/images.sh (as `make images` does), so `make test` runs them too whenever
## the Docker engine answers.
faulttest:
	MESHCA_REQUIRE_DOCKER=1 $(GO) test -race -count=1 -timeout 15m -v ./internal/faulttest/...

clean:
	rm -rf $(BIN) .dev
