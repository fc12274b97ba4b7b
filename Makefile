# zguard — see README.md. `make demo` and `make test` work on a fresh Debian
# machine as root: both install what is missing first (scripts/deps.sh).

GO      ?= go
PREFIX  ?= /usr/local
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/zguard/zguard/agent.Version=$(VERSION)

# go-nvml is cgo; its headers use deprecated declarations.
export CGO_CFLAGS := -Wno-deprecated-declarations
export PATH := $(PATH):/usr/local/go/bin

.PHONY: all build deps test test-short lint fuzz bench demo demo-stop install uninstall clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/zguard ./cmd/zguard
	CGO_ENABLED=0 $(GO) build -o bin/fakecomfy ./cmd/fakecomfy

# Installs Debian packages the tests and demo need and starts dockerd if it
# is not answering. Idempotent.
deps:
	./scripts/deps.sh

# Unit and privileged integration tests together. Packages run one at a
# time (-p 1): some tests restart dockerd or edit DOCKER-USER. With
# ZGUARD_REQUIRE_PRIVILEGED=1 a test that would skip fails instead.
test: deps
	$(GO) test -p 1 -count=1 -timeout 40m ./...

# Only the tests that need neither root nor Docker.
test-short:
	$(GO) test -count=1 -short ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Runs every fuzz target for FUZZTIME each.
FUZZTIME ?= 30s
fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

# Benchmarks side by side with their anchors; see bench/.
bench: deps build
	./bench/run.sh

demo:
	./demo/demo.sh

demo-stop:
	./demo/demo.sh stop

install: build
	install -D -m 0755 bin/zguard $(DESTDIR)$(PREFIX)/bin/zguard
	install -D -m 0644 systemd/zguard.service $(DESTDIR)/etc/systemd/system/zguard.service
	install -d -m 0700 $(DESTDIR)/etc/zguard
	@if [ -e $(DESTDIR)/etc/zguard/config.toml ]; then \
		echo "/etc/zguard/config.toml exists: left unchanged (new default: config.toml)"; \
	else install -m 0600 config.toml $(DESTDIR)/etc/zguard/config.toml; fi
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "next: edit /etc/zguard/config.toml, zguard passwd USER, zguard check, systemctl enable --now zguard"

uninstall:
	-systemctl disable --now zguard 2>/dev/null
	-$(PREFIX)/bin/zguard cleanup -c /etc/zguard/config.toml
	rm -f $(PREFIX)/bin/zguard /etc/systemd/system/zguard.service

clean:
	rm -rf bin demo/run bench/out
