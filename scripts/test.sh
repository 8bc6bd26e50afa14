#!/usr/bin/env bash
# One command on a fresh machine: install everything the tests need, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v chromium >/dev/null || need+=(chromium chromium-driver)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v docker-compose >/dev/null || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
bash scripts/setup.sh test
# Two workers, a test file each at a time: most tests wait on a server, a browser or a subprocess,
# so two workers overlap their waiting on 2 cores; each worker has its own Redis and test models.
exec python3 -m pytest -p no:cacheprovider -n 2 --dist loadfile "$@"
