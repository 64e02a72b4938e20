#!/usr/bin/env bash
# Install Debian's chromium for the status page's browser test, when it is missing.
# `make test` runs this before pytest; CI is a clean clone on the same kind of machine (root).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "ensure-chromium: /usr/bin/chromium is missing and we are not root;" \
        "install Debian's chromium package (the status page test will be skipped)" >&2
    exit 0
fi
echo "ensure-chromium: installing Debian's chromium package" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || apt-get update
apt-get install -y -qq --no-install-recommends chromium >/dev/null
test -x /usr/bin/chromium
