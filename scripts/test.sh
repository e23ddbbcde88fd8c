#!/usr/bin/env bash
# Runs every check and test webaccel has: formatting, clippy, unit tests and the
# end-to-end tests that start real Chromium processes, the in-page runtime's tests (with
# node), then the container images (built with podman from a debootstrap base and run
# read-only). Installs what they need first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The in-page runtime's own tests (frames, op handling), on the golden messages the
# agent's tests read too.
(cd node-agent/web && node --test test/)
scripts/images.sh build && scripts/images.sh test
