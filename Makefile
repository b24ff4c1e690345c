# The reference's developer flow (make install / test / build / run), on the same scripts
# npm and CI use: nothing here that `npm` or `.ci/run` does not do too.
.PHONY: help install test lint format bench build run ci clean

IMAGE_NAME ?= otari-sandbox-container
IMAGE_TAG  ?= dev
PORT       ?= 8080

help:
	@echo "otari-sandbox-container targets:"
	@echo "  make install  - apt packages, npm ci, build (scripts/install.sh)"
	@echo "  make test     - every test suite (npm test)"
	@echo "  make lint     - eslint, prettier, ruff, pyright (npm run lint)"
	@echo "  make format   - prettier --write"
	@echo "  make bench    - the benchmark (npm run bench; BENCH_ARGS=--quick)"
	@echo "  make build    - docker build $(IMAGE_NAME):$(IMAGE_TAG)"
	@echo "  make run      - docker run the image on port $(PORT) with the sandbox's flags"
	@echo "  make ci       - what CI runs (.ci/run)"
	@echo "  make clean    - remove build output"

install:
	bash scripts/install.sh

test:
	npm test

lint:
	npm run --silent lint

format:
	npm run format

bench:
	npm run bench -- $(BENCH_ARGS)

build:
	docker build -t $(IMAGE_NAME):$(IMAGE_TAG) .

# The flags are those README "Running the image with the full sandbox" explains.
run:
	docker run --rm -p $(PORT):8080 \
	  --security-opt seccomp=deploy/seccomp-sandbox.json \
	  --security-opt apparmor=unconfined \
	  --security-opt systempaths=unconfined \
	  --cap-add SYS_ADMIN \
	  --tmpfs /var/sandbox/sessions:size=8g,mode=0711 \
	  $(IMAGE_NAME):$(IMAGE_TAG)

ci:
	bash .ci/run

clean:
	rm -rf dist
