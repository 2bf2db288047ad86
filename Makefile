# millrace — make run starts the embedded topology; make test runs every
# test against real PostgreSQL, Redis and NATS (started when missing).
GO       ?= go
BIN      := bin/millrace
BENCH    := bin/millrace-bench
CONFIG   ?= topologies/embedded.toml
PKGS     := ./...

.PHONY: all build run test test-short lint bench services clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/millrace

run: build
	./$(BIN) run -c $(CONFIG)

services:
	bash test/services.sh

test: services
	$(GO) vet $(PKGS)
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

test-short:
	$(GO) test -short -count=1 $(PKGS)

STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) run $(STATICCHECK) $(PKGS)

# The benchmark suite (docs/performance.md), a binary of its own
# (cmd/millrace-bench) so that bin/millrace does not link it: writes
# bench/results.json, bench/RESULTS.md and bench/chart.png. The budget
# keeps it, build included, under 10 minutes on a 2-core machine.
BENCH_FLAGS ?= --budget 7m --cpuprofile

bench: services
	$(GO) build -o $(BENCH) ./cmd/millrace-bench
	./$(BENCH) $(BENCH_FLAGS)

clean:
	rm -rf bin data
