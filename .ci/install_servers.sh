#!/usr/bin/env bash
# Installs the third-party servers that the integration tests start on 127.0.0.1:
#   - MPD and mpc (Debian packages `mpd`, `mpc`): tests/test_server_mpd.py
#   - supysonic 0.7.9 (a Subsonic API server, PyPI) in its own venv: tests/test_server_subsonic.py
#   - Milvus 2.3.5 standalone (the binary in the PyPI `milvus` wheel) in its own venv:
#     tests/test_server_milvus.py
#   - Chromium (Debian `chromium`), headless: the `mtx serve` page, tests/test_server_serve.py
# The venvs live under $MTX_TEST_SERVERS (default ~/.cache/mtx-test-servers), outside the repo,
# so their dependencies never touch mtx's; a second run finds them and returns at once.
# Each install that fails prints a warning and the tests that need it skip, naming it.
set -uo pipefail
cd "$(dirname "$0")/.."
DIR="${MTX_TEST_SERVERS:-$HOME/.cache/mtx-test-servers}"
PY="${PYTHON:-python3}"
MILVUS_VERSION=2.3.5
failed=0

warn() { echo "warning: $*; the tests that need it will be skipped" >&2; failed=1; }

# --- MPD + mpc (Debian)
if ! command -v mpd >/dev/null 2>&1 && [ ! -x /usr/bin/mpd ] || ! command -v mpc >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mpd mpc \
      >/dev/null) || warn "could not install mpd and mpc (apt-get)"
  else
    warn "mpd and mpc are missing and apt-get is not available"
  fi
fi

# --- Chromium (Debian `chromium`): the `mtx serve` page test renders the page headless
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
    || warn "could not install chromium (apt-get)"
fi

# --- a venv per server (pinned), created next to a marker written last
venv() {  # name, then pip arguments
  local name="$1"; shift
  local marker="$DIR/$name/.mtx-installed"
  local want="$*"
  if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then
    return 0
  fi
  rm -rf "$DIR/$name"
  mkdir -p "$DIR"
  if "$PY" -m venv "$DIR/$name" && "$DIR/$name/bin/pip" install -q --disable-pip-version-check "$@" >/dev/null; then
    echo "$want" > "$marker"
  else
    rm -rf "$DIR/$name"
    warn "could not install $name into $DIR/$name"
  fi
}

venv supysonic -r .ci/supysonic-requirements.txt
venv milvus "milvus==$MILVUS_VERSION"

exit "$failed"
