#!/usr/bin/env bash
# Install everything the test suite needs (Debian packages and Python packages),
# then run the linters, the type checker and the whole test suite.
# Usage: bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

APT_PACKAGES="docker-registry skopeo umoci podman apache2-utils time"
missing=""
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "== installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

echo "== installing derrick and its test dependencies"
python3 -m pip install -q --disable-pip-version-check -e '.[test]'

echo "== ruff"
python3 -m ruff check src tests benchmarks
python3 -m ruff format --check src tests benchmarks
echo "== mypy"
python3 -m mypy
echo "== pytest"
python3 -m pytest -q -p no:cacheprovider "$@"
