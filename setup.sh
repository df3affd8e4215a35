#!/usr/bin/env bash
# One-time setup on Linux and macOS: install.py makes .venv with the PyTorch build for this machine and the
# pinned dependencies; this script passes it its arguments (bash setup.sh --help lists them).
#   bash setup.sh                 the app and the command line
#   bash setup.sh --test          also the test tools, and Debian's headless Chromium for the browser test
#   bash setup.sh --dry-run       what would be installed for this machine, and why; installs nothing
# PYTHON=python3.12 bash setup.sh picks the Python that makes .venv.
set -euo pipefail
cd "$(dirname "$0")"

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found: install Python 3.10 or newer (or name one with PYTHON=...)" >&2
    exit 1
fi
# install.py says the same, but a Python too old to read it would answer with a traceback.
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 10))' 2>/dev/null; then
    echo "error: FramePack needs Python 3.10 or newer; $python is $("$python" -V 2>&1 || echo 'unknown')" >&2
    exit 1
fi

"$python" install.py "$@"

test=0
for arg in "$@"; do
    case "$arg" in
        --test) test=1 ;;
        --dry-run | -h | --help) exit 0 ;;
    esac
done
# The browser test drives Debian's Chromium (Playwright's own browser download is not used).
if [ "$test" = 1 ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [ -z "$sudo" ] || command -v sudo >/dev/null 2>&1; then
        $sudo apt-get update -qq
        $sudo apt-get install -y -qq chromium >/dev/null
    else
        echo "Chromium is not installed and there is no sudo: the browser test will be skipped." >&2
    fi
fi
