#!/usr/bin/env bash
# Make sure the status page's browser test (tests/e2e/test_status_page.py) has Debian's
# chromium at /usr/bin/chromium. `make test` runs this before pytest.
#
# - chromium there: nothing to do.
# - QUICFLOW_SKIP_CHROMIUM=1 (e.g. `make test QUICFLOW_SKIP_CHROMIUM=1`): install nothing;
#   the status page test is skipped.
# - not root: install nothing, say so; the status page test is skipped.
# - root with apt-get (Debian, Ubuntu; CI is a clean clone on such a machine): install
#   the chromium package with apt-get, saying so first.
# - root without apt-get: fail, saying what to do.
#
# QUICFLOW_CHROMIUM names another path to look for (the tests of this script use it).
set -euo pipefail
chromium="${QUICFLOW_CHROMIUM:-/usr/bin/chromium}"
say() { echo "ensure-chromium: $*" >&2; }
if [ -x "$chromium" ]; then
    exit 0
fi
if [ -n "${QUICFLOW_SKIP_CHROMIUM:-}" ]; then
    say "$chromium is missing and QUICFLOW_SKIP_CHROMIUM is set: not installing it;" \
        "the status page test will be skipped"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    say "$chromium is missing and we are not root: not installing it; the status page" \
        "test will be skipped (install Debian's chromium package to run it)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "$chromium is missing and there is no apt-get here to install Debian's chromium" \
        "package with. Install Chromium at $chromium, or run" \
        "'make test QUICFLOW_SKIP_CHROMIUM=1' to skip the status page test."
    exit 1
fi
say "$chromium is missing: installing Debian's chromium package with apt-get (about" \
    "100 MB, for the status page test; 'make test QUICFLOW_SKIP_CHROMIUM=1' skips this)"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq >/dev/null || apt-get update; } ||
    ! apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
    say "apt-get could not install chromium (see above). Install it yourself, or run" \
        "'make test QUICFLOW_SKIP_CHROMIUM=1' to skip the status page test."
    exit 1
fi
if [ ! -x "$chromium" ]; then
    say "apt-get installed chromium, but $chromium is still missing"
    exit 1
fi
