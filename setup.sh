#!/usr/bin/env bash
# One-time setup: a virtual environment in .venv with the pinned dependencies.
#   bash setup.sh          the app and the command line
#   bash setup.sh --test   also the test tools and Debian's headless Chromium for the browser test
set -euo pipefail
cd "$(dirname "$0")"

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip

if [ "${1:-}" = "--test" ]; then
    .venv/bin/python -m pip install --quiet -r requirements-test.txt
    if ! command -v chromium >/dev/null 2>&1; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        if [ -z "$sudo" ] || command -v sudo >/dev/null 2>&1; then
            $sudo apt-get update -qq
            $sudo apt-get install -y -qq chromium >/dev/null
        else
            echo "Chromium is not installed and there is no sudo: the browser test will be skipped." >&2
        fi
    fi
else
    .venv/bin/python -m pip install --quiet -r requirements.txt
fi
echo "Ready: .venv/bin/python demo_gradio.py"
