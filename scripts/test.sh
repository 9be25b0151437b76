#!/usr/bin/env bash
# Install everything the test suite needs (Debian packages and Python packages),
# then run the linters, the type checker and the whole test suite.
# Usage: bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

APT_PACKAGES="python3-venv docker-registry skopeo umoci podman apache2-utils time docker.io"
missing=""
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "== installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

# A virtual environment of the project's own: the system python3 may be PEP 668-managed,
# and its global packages are never touched.
VENV="${DERRICK_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating the virtual environment $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
export PATH="$(cd "$VENV/bin" && pwd):$PATH"

echo "== installing derrick and its test dependencies"
"$PY" -m pip install -q --disable-pip-version-check -e '.[test]'

echo "== ruff"
"$PY" -m ruff check src tests benchmarks
"$PY" -m ruff format --check src tests benchmarks
echo "== mypy"
"$PY" -m mypy
echo "== pytest"
"$PY" -m pytest -q -p no:cacheprovider "$@"
