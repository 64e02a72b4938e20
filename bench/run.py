"""Run QuicFlow, grpc.aio and grpclib side by side and print one table.

    PYTHONPATH=.:generated .venv/bin/python -m bench.run [--quick | --smoke] [--no-write]

Each system's server (bench/servers.py) and client worker (bench/clients.py)
run in their own processes on 127.0.0.1, all with TLS from throwaway
development certificates (``--plaintext-peers`` drops TLS for the two gRPC
peers only; QuicFlow always has TLS 1.3). grpc.aio's servicer and stub are
generated into a temporary directory at run time. Measurements are
interleaved: each one runs on every system in turn (the order rotates per
repeat) before the next begins, so machine drift hits all alike; a row
shows the median over repeats. Results go to ``bench/results/<date>.json``;
docs/benchmarks.md says what each row measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .common import LABELS, MAIN_ID, VARIANTS, encode, is_quicflow, stop_child
from .common import QUICFLOW_SYSTEMS as ALL_QUICFLOW
from .common import SYSTEMS as ALL_SYSTEMS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

Answer = dict[str, Any]


class CHOSEN:  # a namespace, set once by main
    """The systems this run measures: all, or without QuicFlow's variants (--no-variants)."""

    systems: tuple[str, ...] = ALL_SYSTEMS
    quicflow: tuple[str, ...] = ALL_QUICFLOW


@dataclass(frozen=True)
class Plan:
    """How much each measurement does; every count also has a time limit (seconds)."""

    mode: str
    repeats: int
    latency_n: int
    latency_time: float
    rate_n: int
    rate_time: float
    stream_small_n: int
    stream_small_chunk: int
    stream_big_n: int
    compressed_n: int
    stream_big_chunk: int
    stream_huge_n: int
    stream_huge_chunk: int
    stream_time: float
    connect_n: int
    connect_time: float
    oneway_n: int
    oneway_concurrency: int
    acked_n: int
    idle_clients: int
    idle_time: float
    idle_settle: float
    broadcasts: int


QUICK = Plan(
    mode="quick",
    repeats=1,
    latency_n=300,
    latency_time=1.0,
    rate_n=100_000,
    rate_time=0.6,
    stream_small_n=4_000,
    stream_small_chunk=1_000,
    stream_big_n=16,
    compressed_n=16,
    stream_big_chunk=4,
    stream_huge_n=4,
    stream_huge_chunk=2,
    stream_time=1.5,
    connect_n=8,
    connect_time=3.0,
    oneway_n=3_000,
    oneway_concurrency=16,
    acked_n=1_000,
    idle_clients=100,
    idle_time=30.0,
    idle_settle=1.0,
    broadcasts=2,
)

SMOKE = Plan(
    mode="smoke",
    repeats=1,
    latency_n=20,
    latency_time=0.2,
    rate_n=200,
    rate_time=0.1,
    stream_small_n=100,
    stream_small_chunk=50,
    stream_big_n=2,
    compressed_n=2,
    stream_big_chunk=1,
    stream_huge_n=1,
    stream_huge_chunk=1,
    stream_time=0.3,
    connect_n=2,
    connect_time=1.0,
    oneway_n=100,
    oneway_concurrency=4,
    acked_n=50,
    idle_clients=5,
    idle_time=10.0,
    idle_settle=0.1,
    broadcasts=1,
)
"""Every measurement once, with tiny counts: that the bench runs, not what it measures
(tests/bench/test_bench_smoke.py)."""

FULL = Plan(
    mode="full",
    repeats=3,
    latency_n=2_000,
    latency_time=5.0,
    rate_n=1_000_000,
    rate_time=3.0,
    stream_small_n=50_000,
    stream_small_chunk=1_000,
    stream_big_n=128,
    compressed_n=64,
    stream_big_chunk=8,
    stream_huge_n=16,
    stream_huge_chunk=4,
    stream_time=6.0,
    connect_n=30,
    connect_time=15.0,
    oneway_n=20_000,
    oneway_concurrency=16,
    acked_n=10_000,
    idle_clients=1_000,
    idle_time=240.0,
    idle_settle=3.0,
    broadcasts=3,
)


@dataclass
class Row:
    """One line of the table: a value per system (None: does not apply or failed)."""

    key: str
    label: str
    unit: str
    lower_is_better: bool
    values: dict[str, float | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class Proc:
    """A child process speaking one JSON line per command; stderr goes to a log file."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        self.process: asyncio.subprocess.Process | None = None
        self._log_file: TextIO | None = None

    async def start(self, argv: Sequence[str], env: dict[str, str], ready_timeout: float) -> str:
        """Start and return the first line it prints (``ready ...``)."""
        self._log_file = self.log.open("w")
        self.process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=env,
            cwd=ROOT,
            limit=1 << 20,
        )
        line = await self._line(ready_timeout)
        if not line.startswith("ready"):
            raise RuntimeError(f"{self.name}: expected 'ready', got {line!r}")
        return line

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def _line(self, timeout: float) -> str:
        assert self.process is not None and self.process.stdout is not None
        for _ in range(1000):  # skip stray output, but not forever
            raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
            if not raw:
                raise RuntimeError(f"{self.name} exited (code {self.process.returncode})")
            line = raw.decode().strip()
            if line.startswith(("ready", "{")):
                return line
        raise RuntimeError(f"{self.name}: no protocol line")

    async def ask(self, command: Answer, timeout: float) -> Answer:
        """Send one command and wait (at most ``timeout`` s) for its answer."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write((encode(command) + "\n").encode())
        await self.process.stdin.drain()
        answer: Answer = json.loads(await self._line(timeout))
        if "error" in answer:
            raise RuntimeError(f"{self.name}: {answer['error']}")
        return answer

    async def stop(self) -> None:
        """Close stdin (the child's signal to stop), then terminate, then kill."""
        await stop_child(self.process, 5.0)
        if self._log_file is not None:
            self._log_file.close()

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (from /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / (1 << 20), 1)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def generate_grpc(out: Path) -> Path:
    """Write echo/echo_pb2_grpc.py for grpc.aio into ``out`` with grpc_tools.protoc."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--grpc_python_out={out}",
            str(ROOT / "proto" / "echo" / "echo.proto"),
        ],
        check=True,
        timeout=60,
    )
    return out


class Bench:
    """Starts every process, runs the plan interleaved, and always stops every process."""

    def __init__(self, plan: Plan, scratch: Path, plaintext_peers: bool) -> None:
        self.plan = plan
        self.scratch = scratch
        self.plaintext_peers = plaintext_peers
        self.servers: dict[str, Proc] = {}
        self.clients: dict[str, Proc] = {}
        self.rows: list[Row] = []
        self.failed = False

    def _env(self, system: str) -> dict[str, str]:
        env = dict(os.environ, **VARIANTS.get(system, {}))
        path = [str(ROOT), str(ROOT / "generated")]
        if env.get("PYTHONPATH"):
            path.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(path)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _common_args(self, system: str) -> list[str]:
        args = ["--certs", str(self.scratch / "certs"), "--grpc-gen", str(self.scratch / "gen")]
        if self.plaintext_peers and not is_quicflow(system):
            args.append("--plaintext")
        return args

    async def start(self) -> None:
        from quicflow.certs import write_dev_certs

        write_dev_certs(self.scratch / "certs")
        generate_grpc(self.scratch / "gen")
        ports: dict[str, int] = {}

        async def server(system: str) -> None:
            proc = self.servers[system] = Proc(f"{system} server", self.scratch / f"s-{system}.log")
            argv = [sys.executable, "-m", "bench.servers", system, "--port", "0"]
            line = await proc.start([*argv, *self._common_args(system)], self._env(system), 60.0)
            ports[system] = int(line.split()[1])

        await asyncio.gather(*(server(s) for s in CHOSEN.systems))

        async def client(system: str) -> None:
            proc = self.clients[system] = Proc(f"{system} client", self.scratch / f"c-{system}.log")
            argv = [sys.executable, "-m", "bench.clients", system, "--port", str(ports[system])]
            await proc.start([*argv, *self._common_args(system)], self._env(system), 60.0)

        await asyncio.gather(*(client(s) for s in CHOSEN.systems))

    async def stop(self) -> None:
        procs = [*self.clients.values(), *self.servers.values()]
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)

    def _error(self, row: Row, system: str, exc: BaseException) -> None:
        self.failed = True
        row.errors[system] = f"{type(exc).__name__}: {exc}"[:300]
        row.values[system] = None
        print(f"  ! {row.key} on {system}: {row.errors[system]}", file=sys.stderr)

    async def measure(
        self,
        rows: Sequence[Row],
        systems: Sequence[str],
        one: Callable[[str], Any],
    ) -> None:
        """Run ``one(system)`` per repeat on every system in rotating order; median per row.

        ``one`` returns a value per row (a tuple matching ``rows``).
        """
        samples: dict[str, list[tuple[float, ...]]] = {s: [] for s in systems}
        for repeat in range(self.plan.repeats):
            k = repeat % len(systems)
            for system in [*systems[k:], *systems[:k]]:
                if any(system in row.errors for row in rows):
                    continue
                try:
                    samples[system].append(tuple(await one(system)))
                except Exception as exc:
                    for row in rows:
                        self._error(row, system, exc)
        for i, row in enumerate(rows):
            for system in systems:
                if system not in row.errors and samples[system]:
                    row.values[system] = statistics.median(v[i] for v in samples[system])
        self.rows.extend(rows)
        print(f"  {', '.join(r.key for r in rows)}: done", file=sys.stderr, flush=True)

    async def run(self) -> None:
        p = self.plan
        # Warm-up (not recorded): imports, caches, the first streams of each connection.
        for system in CHOSEN.systems:
            with contextlib.suppress(Exception):
                await self.ask(system, {"op": "rate", "c": 16, "n": 2_000, "time": 0.3})

        async def latency(system: str) -> tuple[float, float]:
            a = await self.ask(system, {"op": "latency", "n": p.latency_n, "time": p.latency_time})
            return a["p50_us"], a["p99_us"]

        await self.measure(
            [
                Row("unary_p50_us", "unary 64 B p50 latency, c=1", "µs", True),
                Row("unary_p99_us", "unary 64 B p99 latency, c=1", "µs", True),
            ],
            CHOSEN.systems,
            latency,
        )
        for c in (1, 16, 128):

            async def rate(system: str, c: int = c) -> tuple[float]:
                command = {"op": "rate", "c": c, "n": p.rate_n, "time": p.rate_time}
                return ((await self.ask(system, command))["calls_per_s"],)

            label = f"unary 64 B calls/s, c={c}, one connection"
            await self.measure([Row(f"unary_c{c}", label, "calls/s", False)], CHOSEN.systems, rate)

        async def stream_small(system: str) -> tuple[float]:
            command = {
                "op": "stream",
                "size": 64,
                "n": p.stream_small_n,
                "chunk": p.stream_small_chunk,
                "time": p.stream_time,
            }
            return ((await self.ask(system, command))["msgs_per_s"],)

        label = "server streaming 64 B messages/s"
        await self.measure([Row("stream_64", label, "msgs/s", False)], CHOSEN.systems, stream_small)

        async def stream_big(system: str) -> tuple[float]:
            command = {
                "op": "stream",
                "size": 1 << 20,
                "n": p.stream_big_n,
                "chunk": p.stream_big_chunk,
                "time": p.stream_time,
            }
            return ((await self.ask(system, command))["mib_per_s"],)

        label = "server streaming 1 MiB messages"
        await self.measure([Row("stream_1mib", label, "MiB/s", False)], CHOSEN.systems, stream_big)

        async def stream_huge(system: str) -> tuple[float]:
            command = {
                "op": "stream",
                "size": 16 << 20,
                "n": p.stream_huge_n,
                "chunk": p.stream_huge_chunk,
                "time": p.stream_time * 2,
            }
            return ((await self.ask(system, command))["mib_per_s"],)

        label = "server streaming 16 MiB messages"
        await self.measure(
            [Row("stream_16mib", label, "MiB/s", False)], CHOSEN.systems, stream_huge
        )

        async def compressed(system: str) -> tuple[float]:
            command = {"op": "compressed", "size": 1 << 20, "n": p.compressed_n, "time": 10.0}
            return ((await self.ask(system, command))["mib_per_s"],)

        # grpclib cannot: it refuses compressed messages (docs/benchmarks.md).
        label = "unary compressible 1 MiB, gzip both ways (MiB of messages/s)"
        await self.measure(
            [Row("unary_gzip_1mib", label, "MiB/s", False)],
            [s for s in CHOSEN.systems if s != "grpclib"],
            compressed,
        )

        async def connect(system: str) -> tuple[float]:
            command = {"op": "connect", "n": p.connect_n, "time": p.connect_time}
            return ((await self.ask(system, command))["p50_ms"],)

        label = "connection setup + first call, p50"
        await self.measure([Row("connect_ms", label, "ms", True)], CHOSEN.systems, connect)

        async def resume(system: str) -> tuple[float]:
            command = {
                "op": "connect",
                "n": p.connect_n,
                "time": p.connect_time,
                "resume": True,
            }
            return ((await self.ask(system, command))["p50_ms"],)

        # grpclib has no TLS session reuse across channels to ask for.
        label = "connection setup + first call, TLS resumed, p50"
        await self.measure(
            [Row("connect_resumed_ms", label, "ms", True)],
            [s for s in CHOSEN.systems if s != "grpclib"],
            resume,
        )

        await self.measure(
            [Row("oneway", "one-way untyped messages/s, one connection", "msgs/s", False)],
            CHOSEN.quicflow,
            self.oneway,
        )
        await self.measure(
            [Row("acked", "acked sends/s (server.async_send to one client)", "sends/s", False)],
            CHOSEN.quicflow,
            self.acked,
        )
        await self.idle_and_broadcast()

    async def ask(self, system: str, command: Answer, margin: float = 30.0) -> Answer:
        """Ask ``system``'s client worker; the wait is bounded by the command's own limit."""
        return await self.clients[system].ask(command, float(command.get("time", 5.0)) + margin)

    async def oneway(self, system: str) -> tuple[float]:
        p = self.plan
        server = self.servers[system]
        await server.ask({"op": "arm", "n": p.oneway_n}, 10.0)
        limit = 10.0
        sent = await self.ask(
            system, {"op": "oneway", "n": p.oneway_n, "c": p.oneway_concurrency, "time": limit}
        )
        got = await server.ask({"op": "oneway_wait", "timeout": limit}, limit + 10.0)
        if got["count"] < sent["sent"]:
            raise RuntimeError(f"server got {got['count']} of {sent['sent']} one-way messages")
        return (got["count"] / (got["last"] - sent["t0"]),)

    async def acked(self, system: str) -> tuple[float]:
        command = {"op": "acked", "client_id": MAIN_ID, "n": self.plan.acked_n, "timeout": 20.0}
        answer = await self.servers[system].ask(command, 60.0)
        if answer["ok"] != self.plan.acked_n:
            raise RuntimeError(f"{answer['ok']} of {self.plan.acked_n} acked sends succeeded")
        return (answer["ok"] / answer["elapsed"],)

    async def idle_and_broadcast(self) -> None:
        """Per system: connect N idle clients, read the server's RSS, (broadcast), close."""
        p = self.plan
        n = p.idle_clients
        rss = Row("rss_per_client_kib", f"server RSS per idle client, {n} clients", "KiB", True)
        broadcast = Row("broadcast_ms", f"broadcast 64 B to {n} clients, all acked", "ms", True)
        for system in CHOSEN.systems:
            try:
                before = rss_kib(self.servers[system].pid)
                command = {"op": "idle", "n": n, "time": p.idle_time}
                opened = await self.ask(system, command)
                if opened["n"] != n:
                    raise RuntimeError(f"{opened['n']} of {n} idle clients connected")
                await asyncio.sleep(p.idle_settle)
                rss.values[system] = (rss_kib(self.servers[system].pid) - before) / n
                if is_quicflow(system):
                    await self.broadcast(broadcast, n, system)
            except Exception as exc:
                self._error(rss, system, exc)
            finally:
                with contextlib.suppress(Exception):
                    await self.ask(system, {"op": "close_idle", "time": 60.0})
        self.rows += [broadcast, rss]
        print("  broadcast_ms, rss_per_client_kib: done", file=sys.stderr, flush=True)

    async def broadcast(self, row: Row, n: int, system: str) -> None:
        server = self.servers[system]
        try:
            seen = await server.ask({"op": "clients"}, 10.0)
            if seen["idle"] != n:
                raise RuntimeError(f"server sees {seen['idle']} of {n} idle clients")
            times: list[float] = []
            for _ in range(self.plan.broadcasts):
                answer = await server.ask({"op": "broadcast", "timeout": 20.0}, 60.0)
                if answer["delivered"] != n:
                    raise RuntimeError(f"broadcast delivered to {answer['delivered']} of {n}")
                times.append(answer["elapsed"] * 1e3)
            row.values[system] = statistics.median(times)
        except Exception as exc:
            self._error(row, system, exc)


def fmt(value: float | None) -> str:
    """A figure for the table: three significant digits, thousands separated."""
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(row: Row, peer: str, ours_system: str = "quicflow") -> str:
    ours, theirs = row.values.get(ours_system), row.values.get(peer)
    if ours is None or theirs is None or theirs == 0:
        return "—"
    return f"{ours / theirs:.2f}x"


def table(rows: Sequence[Row]) -> str:
    """The results as a Markdown table (it also reads well in a terminal)."""
    head = ["measurement", "unit", *(LABELS[s] for s in CHOSEN.systems)]
    head += [f"{LABELS[s]} / grpc.aio" for s in CHOSEN.quicflow] + ["QuicFlow / grpclib"]
    lines = [head]
    for row in rows:
        label = row.label + (" (lower is better)" if row.lower_is_better else "")
        values = [
            fmt(row.values.get(s)) if s not in row.errors else "error" for s in CHOSEN.systems
        ]
        ratios = [ratio(row, "grpcaio", s) for s in CHOSEN.quicflow] + [ratio(row, "grpclib")]
        lines.append([label, row.unit, *values, *ratios])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]

    def render(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i >= 2 else "-") for i, w in enumerate(widths))
    return "\n".join([render(lines[0]), rule + "|", *(render(line) for line in lines[1:])])


async def main_async(plan: Plan, write: bool, plaintext_peers: bool) -> int:
    started = time.perf_counter()
    info = machine()
    print(
        f"bench ({plan.mode}): {info['cpus']} CPUs, {info['cpu_model']}, "
        f"{info['memory_gib']} GiB, Python {info['python']}",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="quicflow-bench-") as tmp:
        bench = Bench(plan, Path(tmp), plaintext_peers)
        try:
            await bench.start()
            await bench.run()
        except Exception as exc:
            bench.failed = True
            print(f"bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            await bench.stop()
            if bench.failed:
                for proc in [*bench.servers.values(), *bench.clients.values()]:
                    tail = proc.log_tail()
                    if tail:
                        print(f"--- {proc.name} stderr (tail) ---\n{tail}", file=sys.stderr)
    runtime = time.perf_counter() - started
    tls = "TLS 1.3 for QuicFlow; " + ("plaintext" if plaintext_peers else "TLS") + " for peers"
    print(f"\nQuicFlow vs grpc.aio vs grpclib, {plan.mode} mode, {tls}, {runtime:.0f} s")
    print(table(bench.rows))
    if write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"{datetime.date.today().isoformat()}.json"
        result = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "mode": plan.mode,
            "security": tls,
            "runtime_s": round(runtime, 1),
            "machine": info,
            "plan": asdict(plan),
            "rows": [asdict(row) for row in bench.rows],
        }
        out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {out.relative_to(ROOT)}")
    return 1 if bench.failed else 0


def main() -> None:
    """Parse arguments and run the comparison."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="under a minute: fewer of all")
    parser.add_argument(
        "--smoke", action="store_true", help="seconds: every measurement once, tiny counts"
    )
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/")
    parser.add_argument(
        "--plaintext-peers", action="store_true", help="run grpc.aio and grpclib without TLS"
    )
    parser.add_argument(
        "--no-variants",
        action="store_true",
        help="QuicFlow with its defaults only (no qh3 / 1200-byte datagram columns)",
    )
    args = parser.parse_args()
    if args.no_variants:
        CHOSEN.systems = tuple(s for s in ALL_SYSTEMS if s not in VARIANTS)
        CHOSEN.quicflow = ("quicflow",)
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    sys.exit(asyncio.run(main_async(plan, not args.no_write, args.plaintext_peers)))


if __name__ == "__main__":
    main()
