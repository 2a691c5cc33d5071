#!/usr/bin/env bash
# The two set-up commands of the README, on a fresh machine:
#   bash run.sh demo    # the live thermal demo on the embedded broker
#   bash run.sh test    # the whole test suite (what CI runs)
# Both create the virtualenv .venv and install the project into it when needed.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${LIQUID_VENV:-.venv}"

# bytewax 0.21.1 ships wheels for CPython 3.11 and 3.12 only (pyproject's requires-python).
supported() { "$1" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 12) else 1)' 2>/dev/null; }
if [ ! -x "$VENV/bin/python" ]; then
  PY=""
  for candidate in ${PYTHON:-} python3 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 && supported "$candidate"; then PY="$candidate"; break; fi
  done
  if [ -z "$PY" ]; then
    echo "run.sh: Python 3.11 or 3.12 is needed (bytewax 0.21.1 has no wheel for others); install python3.12 or set PYTHON=/path/to/python3.12" >&2
    exit 2
  fi
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
