#!/usr/bin/env bash
# Run docs/quickstart.md exactly as written and check its output (`make test` runs this).
#
# Every ```sh quickstart block runs, in order, in one bash shell (set -e) inside
# an empty temporary directory; every ```<lang> file=PATH block is written to
# PATH when the walk-through reaches it; the ```text output block after a
# command block lists lines that must appear, in that order, in what the block
# printed (stdout and stderr, including background jobs it started); `...`
# matches anything. Only the project's venv is needed (PATH gets .venv/bin).
#
# The quickstart's fixed port (50443) is replaced through the documented
# environment overrides QUICFLOW_SERVER_PORT / QUICFLOW_CLIENT_PORT with a free
# one, so parallel runs cannot collide.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DOC="$ROOT/docs/quickstart.md"
VENV_BIN="$ROOT/.venv/bin"
PY="${PYTHON:-$VENV_BIN/python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/quicflow-quickstart.XXXXXX")"
# QUICKSTART_KEEP=1 keeps the directory (and every step's .outN) for a look afterwards.
if [ -z "${QUICKSTART_KEEP:-}" ]; then trap 'rm -rf "$WORK"' EXIT; else echo "keeping $WORK" >&2; fi

"$PY" - "$DOC" "$WORK" <<'PYEOF'
"""Turn the quickstart into run.sh plus expected-output files."""
import re
import sys
from pathlib import Path

doc, work = Path(sys.argv[1]), Path(sys.argv[2])
fences = re.findall(r"^```([^\n]*)\n(.*?)^```\s*$", doc.read_text(), re.M | re.S)
script = [
    "set -e",
    # Kill whatever the walk-through left running if a step fails or time runs out.
    "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT",
    "trap 'exit 1' TERM INT",
]
block = 0
for info, body in fences:
    words = info.split()
    if words[1:2] == ["quickstart"]:
        block += 1
        (work / f".block{block}.sh").write_text(body)
        script.append(f"echo '--- step {block}' >&2")
        script.append(f"{{\n{body}}} > .out{block} 2>&1 || {{ cat .out{block}; exit 1; }}")
    elif len(words) > 1 and words[1].startswith("file="):
        path = words[1].removeprefix("file=")
        script.append(f"mkdir -p \"$(dirname '{path}')\"")
        script.append(f"cat > '{path}' <<'QUICKSTART_FILE_EOF'\n{body}QUICKSTART_FILE_EOF")
    elif words[1:2] == ["output"]:
        if block == 0:
            sys.exit("quickstart.md: an output block before any command block")
        (work / f".expect{block}").write_text(body)
script.append("wait")
script.append("trap - EXIT")
(work / ".run.sh").write_text("\n".join(script) + "\n")
if block == 0:
    sys.exit("quickstart.md: no ```sh quickstart blocks found")
print(f"quickstart: {block} command blocks", file=sys.stderr)
PYEOF

PORT="$("$PY" -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cd "$WORK"
# A step that hangs (a server that never answers) fails the run after 5 minutes.
if ! env PATH="$VENV_BIN:$PATH" QUICFLOW_SERVER_PORT="$PORT" QUICFLOW_CLIENT_PORT="$PORT" \
    timeout 300 bash .run.sh; then
    echo "quickstart FAILED in the step above (its output is printed above)" >&2
    exit 1
fi

"$PY" - "$WORK" <<'PYEOF'
"""Compare each step's output with its expected lines."""
import re
import sys
from pathlib import Path

work = Path(sys.argv[1])
failed = False
for expect in sorted(work.glob(".expect*")):
    n = expect.name.removeprefix(".expect")
    actual = (work / f".out{n}").read_text().splitlines()
    position = 0
    for want in [line for line in expect.read_text().splitlines() if line.strip()]:
        pattern = re.compile(".*".join(re.escape(part) for part in want.split("...")) + r"\s*$")
        while position < len(actual) and not pattern.match(actual[position]):
            position += 1
        if position == len(actual):
            failed = True
            print(f"quickstart step {n}: expected a line like {want!r}; the step printed:", file=sys.stderr)
            print("\n".join("    " + line for line in actual), file=sys.stderr)
            break
        position += 1
if failed:
    sys.exit(1)
print("quickstart OK", file=sys.stderr)
PYEOF
