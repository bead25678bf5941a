# One command per workflow. Each installs what it needs on a fresh machine and caches
# it outside the checkout, under $(FLASHSALE_CACHE).
FLASHSALE_CACHE ?= $(HOME)/.cache/flashsale
export FLASHSALE_CACHE
# Build artefacts live in the cache too, so a fresh clone (CI) reuses compiled deps.
export CARGO_TARGET_DIR ?= $(FLASHSALE_CACHE)/target

.PHONY: test demo bench-node bench-instructions bench-connections bench-replication bench-forward lint

## make test: every test (unit, property, HTTP, crash, local-cluster e2e).
test:
	bash scripts/test.sh

## make demo: a real sale end to end on the local cluster.
demo:
	bash scripts/demo.sh

## make bench-node: the stock node HTTP load benchmark.
bench-node:
	bash scripts/bench-node.sh

## make bench-instructions: the node's and the no-op's instructions per request under callgrind (steady where bench-node's speed drifts).
bench-instructions:
	bash scripts/bench-instructions.sh

## make bench-connections: the node's CPU per new connection at --connections-max (each closes the one idle longest) and below it.
bench-connections:
	bash scripts/bench-connections.sh

## make bench-replication: replication lag and the throughput cost of async/quorum replication.
bench-replication:
	bash scripts/bench-replication.sh

## make bench-forward: what secondaries that forward purchases in batches take off the primary.
bench-forward:
	bash scripts/bench-forward.sh

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

## make cluster-up / cluster-down / cluster-status: the local cluster (testbed/cluster.sh; FLASHSALE_CLUSTER=dev).
FLASHSALE_CLUSTER ?= dev
.PHONY: cluster-up cluster-down cluster-status
cluster-up:
	bash testbed/cluster.sh up --name $(FLASHSALE_CLUSTER)
cluster-down:
	bash testbed/cluster.sh down --name $(FLASHSALE_CLUSTER)
cluster-status:
	bash testbed/cluster.sh status --name $(FLASHSALE_CLUSTER)
