#!/usr/bin/env bash
# The two set-up commands of the README, on a fresh machine:
#   bash run.sh demo    # the live thermal demo on the embedded broker
#   bash run.sh test    # the whole test suite (what CI runs)
# Both create the virtualenv .venv and install the project into it when needed.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${LIQUID_VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed")'
  "$PY" -m venv "$VENV"
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "installing Liquid Workflow into $VENV (first run: about a minute)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  rm -f "$VENV"/.installed-* && touch "$stamp"
fi

case "${1:-}" in
  demo) shift; exec "$VENV/bin/liquid" demo "$@" ;;
  test) shift; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  *) echo "usage: bash run.sh demo [options] | bash run.sh test [pytest options]" >&2; exit 2 ;;
esac
