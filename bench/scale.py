"""Thousands of clients on one server: ``make scale`` (10,000) and ``make scale-quick`` (1,000).

    PYTHONPATH=.:generated .venv/bin/python -m bench.scale [--quick | --smoke] [--no-write]

One server process (bench/scale_server.py) and client fleets in several processes
(bench/scale_fleet.py: many `Client` objects each, the public API, default settings),
plus one *bystander* process whose single client calls ``Say`` every 50 ms all along,
everything on 127.0.0.1. Every phase is bounded in time and every child is ended by its
PID. The phases (docs/scale.md says what each measures):

1. connect: all fleets connect at once (each at most ``gate`` handshakes in flight);
2. idle: default heartbeats; server CPU and RSS, client RSS per `Client`;
3. unary: a sample of clients call ``Say`` while the rest idle;
4. broadcast: a 64 B ``Say`` with its reply as ack to every client;
5. restart: the server is killed (SIGKILL) and started again on the same port;
6. evict: a third of the fleet processes are killed (SIGKILL) while the rest call;
7. close: half the remaining clients close at once.

A sampler reads the server's and the fleets' CPU and RSS from /proc twice a second, with
the clients connected (fleet ticks). Results go to ``bench/results/scale-<date>.json``, the
chart to ``bench/results/scale.png``, the table into docs/scale.md. Numbers are never
asserted; tests/bench/test_scale_smoke.py only runs ``--smoke``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from .common import encode, percentile, stop_child
from .run import machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "scale.md"
TABLE_BEGIN, TABLE_END = "<!-- scale-table -->", "<!-- /scale-table -->"

Answer = dict[str, Any]
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
PHASES = ("connect", "idle", "unary", "broadcast", "restart", "evict", "close")


@dataclass(frozen=True)
class Plan:
    """How big and how long; every phase also has a time limit (seconds)."""

    mode: str
    clients: int
    fleets: int
    """Fleet processes (a third of them are killed in the evict phase)."""
    gate: int = 32
    """Handshakes in flight at once per fleet during the connect phase."""
    connect_max: float = 120.0
    idle: float = 16.0
    """Idle window: at least one default heartbeat interval (15 s)."""
    unary_callers: int = 100
    unary_seconds: float = 3.0
    broadcasts: int = 3
    restart_max: float = 60.0
    evict_max: float = 60.0
    evict_callers: int = 100
    close_max: float = 20.0
    hb_interval: float = 0.0
    """Heartbeat interval for server and clients; 0: the defaults (15 s)."""
    fleet_nice: int = 10
    """Niceness of the fleet processes: they stand in for clients on other machines, so
    the server (and the bystander) get the CPU first; 0 shares it evenly (the issue's
    first measurements did: twelve fleets then got twelve shares to the server's one)."""
    server_args: tuple[str, ...] = ()
    """Extra arguments for bench.scale_server (levers under test, e.g. ``--intake-batch 1``)."""
    phases: tuple[str, ...] = PHASES
    storm: str = "pings"
    """How clients learn of the restart: "pings" (each at its next heartbeat ping, spread
    over the interval) or "burst" (every client calls at once after the restart, so all
    hear the reset within a second: a sharper storm at a smaller scale)."""
    engines: tuple[str, ...] = ("aioquic",)
    qh3_phases: tuple[str, ...] = ("connect", "idle", "unary", "broadcast", "restart")
    """What the qh3 engine runs (the rest only on aioquic, to bound the run's time)."""


SMOKE = Plan(
    "smoke",
    clients=18,
    fleets=3,
    gate=8,
    connect_max=30,
    idle=1.0,
    unary_callers=3,
    unary_seconds=0.5,
    broadcasts=1,
    restart_max=20,
    evict_max=20,
    evict_callers=3,
    close_max=10,
    hb_interval=1.0,
)
QUICK = Plan("quick", clients=1_000, fleets=6, connect_max=60, restart_max=45, evict_max=55)
FULL = Plan(
    "full",
    clients=10_000,
    fleets=12,
    gate=8,  # 96 handshakes in flight: 384 starved the niced aioquic fleets past 5 s each
    connect_max=240,
    idle=31.0,
    unary_callers=200,
    unary_seconds=5.0,
    restart_max=150,
    evict_max=75,
    evict_callers=300,
    close_max=30,
    engines=("aioquic", "qh3"),
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (from /proc); 0 if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB; 0 if it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def udp_socket(port: int) -> tuple[int, int]:
    """(bytes queued, datagrams the kernel dropped) of the 127.0.0.1 UDP socket on ``port``
    (from /proc/net/udp; (0, 0) if there is none)."""
    wanted = f"0100007F:{port:04X}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            cells = line.split()
            if cells[1] == wanted:
                return int(cells[4].split(":")[1], 16), int(cells[-1])
    return 0, 0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load() -> float:
    """The one-minute load average (the machine is shared: say how busy it was)."""
    return round(os.getloadavg()[0], 2)


class Child:
    """A child process: JSON answers to commands on stdout, ``tick`` lines kept as they come."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        self.process: asyncio.subprocess.Process | None = None
        self.ready: Answer | None = None
        self.tick: Answer = {}
        self._answers: asyncio.Queue[Answer] = asyncio.Queue()
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._log_file: TextIO | None = None

    async def start(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self._log_file = self.log.open("a")
        self.process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=env,
            cwd=ROOT,
            limit=1 << 24,
        )
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while raw := await self.process.stdout.readline():
            line = raw.decode().strip()
            if line.startswith("ready"):  # the server: "ready <port>"
                self.ready = {"port": int(line.split()[1])}
                self._ready.set()
                continue
            if not line.startswith("{"):
                continue
            message = json.loads(line)
            event = message.pop("event", None)
            if event == "tick":
                self.tick = message
            elif event == "ready":
                self.ready = message
                self._ready.set()
            else:
                self._answers.put_nowait(message)
        self._ready.set()  # exited: nobody waits forever

    async def wait_ready(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.ready is not None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def ask(self, command: Answer, timeout: float) -> Answer:
        """Send one command and wait (at most ``timeout`` s) for its answer."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write((encode(command) + "\n").encode())
        await self.process.stdin.drain()
        answer = await asyncio.wait_for(self._answers.get(), timeout)
        if "error" in answer:
            raise RuntimeError(f"{self.name}: {answer['error']}")
        return answer

    async def kill(self) -> None:
        """SIGKILL by PID and reap."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            assert self.process is not None
            await self.process.wait()
        await self._done()

    async def stop(self) -> None:
        """Close stdin (the child's signal to stop), then SIGTERM, then SIGKILL, by PID."""
        await stop_child(self.process, 15.0)
        await self._done()

    async def _done(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5.0)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def summary(latencies: Sequence[float]) -> Answer:
    """Count, p50, p99 and max of latencies (seconds) in milliseconds."""
    if not latencies:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "count": len(latencies),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
    }


@dataclass
class Run:
    """One engine's pass through the phases."""

    plan: Plan
    engine: str
    scratch: Path
    port: int = 0
    server: Child | None = None
    fleets: list[Child] = field(default_factory=list)
    bystander: Child | None = None
    timeline: list[Answer] = field(default_factory=list)
    phases: dict[str, Answer] = field(default_factory=dict)
    phase: str = ""
    t0: float = 0.0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        path = [str(ROOT), str(ROOT / "generated"), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
        env["QUICFLOW_QUIC_ENGINE"] = self.engine
        return env

    # -- children --

    async def start_server(self) -> float:
        """Start the server on ``self.port``; return seconds until it accepted connections."""
        started = time.perf_counter()
        self.server = Child("server", self.scratch / f"{self.engine}-server.log")
        argv = [sys.executable, "-m", "bench.scale_server", "--port", str(self.port)]
        argv += ["--certs", str(self.scratch / "certs")]
        if self.plan.hb_interval:
            argv += ["--hb-interval", str(self.plan.hb_interval)]
        argv += self.plan.server_args
        await self.server.start(argv, self.env())
        if not await self.server.wait_ready(60):
            raise RuntimeError("the server did not start")
        return time.perf_counter() - started

    def fleet_argv(self, prefix: str, count: int, keep: int = 0, nice: int = 0) -> list[str]:
        argv = [sys.executable, "-m", "bench.scale_fleet", "--port", str(self.port)]
        argv += ["--nice", str(nice)]
        argv += ["--ca", str(self.scratch / "certs" / "ca.pem"), "--count", str(count)]
        argv += ["--prefix", prefix, "--gate", str(self.plan.gate), "--keep", str(keep)]
        if self.plan.hb_interval:
            argv += ["--hb-interval", str(self.plan.hb_interval), "--backoff-max", "2"]
        return argv

    @property
    def fleet_pids(self) -> list[int]:
        return [f.pid for f in self.fleets if f.alive]

    def connected(self, key: str = "connected") -> int:
        return sum(int(f.tick.get(key, 0)) for f in self.fleets if f.alive)

    async def sample(self) -> None:
        """Twice a second: server and fleet CPU (% of one core) and RSS, clients connected."""
        last: tuple[float, float, float] | None = None
        while True:
            now = time.perf_counter()
            server_pid = self.server.pid if self.server is not None and self.server.alive else 0
            server_cpu = cpu_seconds(server_pid) if server_pid else 0.0
            fleet_cpu = sum(cpu_seconds(pid) for pid in self.fleet_pids)
            queued, drops = udp_socket(self.port)
            if last is not None and now > last[0]:
                span = now - last[0]
                self.timeline.append(
                    {
                        "t": round(now - self.t0, 2),
                        "phase": self.phase,
                        "server_cpu": round(100 * max(0.0, server_cpu - last[1]) / span, 1),
                        "fleet_cpu": round(100 * max(0.0, fleet_cpu - last[2]) / span, 1),
                        "server_rss_mib": round(rss_kib(server_pid) / 1024, 1),
                        "connected": self.connected(),
                        "back": self.connected("back"),
                        "rx_queue_kib": round(queued / 1024, 1),
                        "drops": drops,
                    }
                )
            last = (now, server_cpu, fleet_cpu)
            await asyncio.sleep(0.5)

    async def server_stats(
        self, reset: bool = False, timeout: float = 30, objects: bool = False
    ) -> Answer:
        assert self.server is not None
        return await self.server.ask({"op": "stats", "reset": reset, "objects": objects}, timeout)

    async def bystander_window(self) -> Answer:
        """The bystander's latencies since the last window; it starts calling again."""
        assert self.bystander is not None
        answer = await self.bystander.ask({"op": "calls_stop"}, 30)
        await self.bystander.ask({"op": "calls_start", "clients": 1, "every": 0.05}, 30)
        return {**summary(answer["latencies"]), "errors": answer["errors"]}

    def cpu_window(self, start: float, end: float) -> Answer:
        """Mean server and fleet CPU (% of one core) over samples in [start, end), the
        most bytes waiting in the server's socket and the datagrams the kernel dropped."""
        rows = [r for r in self.timeline if start <= r["t"] < end]
        if not rows:
            return {"server_cpu_pct": None, "fleet_cpu_pct": None}
        return {
            "server_cpu_pct": round(sum(r["server_cpu"] for r in rows) / len(rows), 1),
            "fleet_cpu_pct": round(sum(r["fleet_cpu"] for r in rows) / len(rows), 1),
            "rx_queue_max_kib": max(r["rx_queue_kib"] for r in rows),
            "kernel_drops": max(0, rows[-1]["drops"] - rows[0]["drops"]),
        }

    def now(self) -> float:
        return time.perf_counter() - self.t0

    # -- phases --

    async def run(self) -> None:
        plan = self.plan
        phases = [p for p in plan.phases if self.engine == "aioquic" or p in plan.qh3_phases]
        self.t0 = time.perf_counter()
        self.port = free_udp_port()
        await self.start_server()
        sampler = asyncio.ensure_future(self.sample())
        try:
            self.bystander = Child("bystander", self.scratch / f"{self.engine}-bystander.log")
            await self.bystander.start(self.fleet_argv("bystander", 1, keep=1), self.env())
            if not await self.bystander.wait_ready(60):
                raise RuntimeError("the bystander did not connect")
            await self.bystander.ask({"op": "calls_start", "clients": 1, "every": 0.05}, 30)
            for name in phases:
                self.phase = name
                print(
                    f"[{self.engine}] {name} (t={self.now():.0f} s, load {load()})",
                    file=sys.stderr,
                    flush=True,
                )
                started = self.now()
                try:
                    result = await getattr(self, f"phase_{name}")()
                except Exception as exc:  # one phase failing must not lose the others
                    result = {"error": f"{type(exc).__name__}: {exc}"}
                result["load_1m"] = load()
                result["took_s"] = round(self.now() - started, 1)
                self.phases[name] = result
                print(f"[{self.engine}] {name}: {encode(result)[:600]}", file=sys.stderr)
                record = self.scratch / f"{self.engine}-phases.jsonl"  # beside the logs
                with contextlib.suppress(OSError), record.open("a") as out:
                    out.write(encode({"phase": name, **result}) + "\n")
                if name == "connect" and not result.get("connected"):
                    break
        finally:
            sampler.cancel()
            with contextlib.suppress(OSError):
                (self.scratch / f"{self.engine}-timeline.json").write_text(
                    json.dumps(self.timeline)
                )
            children = [self.server, self.bystander, *self.fleets]
            await asyncio.gather(*(c.stop() for c in children if c is not None))

    async def phase_connect(self) -> Answer:
        plan = self.plan
        per = [
            plan.clients // plan.fleets + (i < plan.clients % plan.fleets)
            for i in range(plan.fleets)
        ]
        await self.server_stats(reset=True)
        assert self.server is not None
        cpu0, start = cpu_seconds(self.server.pid), self.now()
        self.fleets = [
            Child(f"fleet{i}", self.scratch / f"{self.engine}-fleet{i}.log")
            for i in range(plan.fleets)
        ]
        for i, (fleet, count) in enumerate(zip(self.fleets, per, strict=True)):
            await fleet.start(self.fleet_argv(f"f{i}", count, nice=plan.fleet_nice), self.env())
        ready = await asyncio.gather(*(f.wait_ready(plan.connect_max) for f in self.fleets))
        elapsed = self.now() - start
        cpu = cpu_seconds(self.server.pid) - cpu0
        stats = await self.server_stats(reset=True, timeout=60)
        answers = [f.ready or {} for f in self.fleets]
        connected = sum(int(a.get("connected", 0)) for a in answers) or self.connected()
        return {
            "clients": plan.clients,
            "connected": connected,
            "all_ready": all(ready),
            "elapsed_s": round(max((a.get("elapsed", elapsed) for a in answers), default=0), 2),
            "first_connect_failures": sum(int(a.get("first_failures", 0)) for a in answers),
            "first_connect_busy": sum(int(a.get("first_busy", 0)) for a in answers),
            "gave_up": sum(int(a.get("gave_up", 0)) for a in answers),
            "server_sessions": stats["sessions"],
            "handshakes_shed": stats["handshakes_shed"],
            "server_cpu_s": round(cpu, 2),
            "server_cpu_ms_per_handshake": round(1000 * cpu / max(1, connected), 3),
            "gc_worst_ms": round(stats["gc_worst_ms"], 1),
            "gc_worst_cpu_ms": round(stats["gc_worst_cpu_ms"], 1),
            "lag_worst_ms": round(stats["lag_worst_ms"], 1),
            **self.cpu_window(start, self.now()),
        }

    async def phase_idle(self) -> Answer:
        await asyncio.sleep(2.0)  # let the connect phase's stragglers settle
        await self.server_stats(reset=True)
        await self.bystander_window()
        start = self.now()
        await asyncio.sleep(self.plan.idle)
        stats = await self.server_stats(reset=True, objects=True)
        end = self.now()
        fleet_answers = [f.ready or {} for f in self.fleets if f.alive]
        grown = sum(
            rss_kib(f.pid) - int(a.get("base_rss_kib", 0))
            for f, a in zip([f for f in self.fleets if f.alive], fleet_answers, strict=True)
        )
        connected = self.connected()
        return {
            "seconds": round(end - start, 1),
            "sessions": stats["sessions"],
            "server_rss_mib": round(stats["rss_kib"] / 1024, 1),
            "server_kib_per_session": round(stats["rss_kib"] / max(1, stats["sessions"]), 1),
            "client_kib_per_client": round(grown / max(1, connected), 1),
            "gc_worst_ms": round(stats["gc_worst_ms"], 1),
            "gc_worst_cpu_ms": round(stats["gc_worst_cpu_ms"], 1),
            "gc_count": stats["gc_count"],
            "gc_objects": stats["gc_objects"],
            "gc_frozen": stats["gc_frozen"],
            "gc_freezes": stats["gc_freezes"],
            "gc_thaws": stats["gc_thaws"],
            "lag_worst_ms": round(stats["lag_worst_ms"], 1),
            "bystander": await self.bystander_window(),
            **self.cpu_window(start, end),
        }

    async def phase_unary(self) -> Answer:
        per = max(1, self.plan.unary_callers // len(self.fleets))
        await asyncio.gather(
            *(f.ask({"op": "calls_start", "clients": per, "every": 0.2}, 30) for f in self.fleets)
        )
        await asyncio.sleep(self.plan.unary_seconds)
        answers = await asyncio.gather(*(f.ask({"op": "calls_stop"}, 30) for f in self.fleets))
        latencies = [x for a in answers for x in a["latencies"]]
        errors: dict[str, int] = {}
        for a in answers:
            for code, n in a["errors"].items():
                errors[code] = errors.get(code, 0) + n
        return {
            "callers": per * len(self.fleets),
            **summary(latencies),
            "errors": errors,
            "wrong": sum(a["wrong"] for a in answers),
        }

    async def phase_broadcast(self) -> Answer:
        assert self.server is not None
        await self.server_stats(reset=True)
        runs = []
        for _ in range(self.plan.broadcasts):
            runs.append(await self.server.ask({"op": "broadcast", "timeout": 30.0}, 120))
            await asyncio.sleep(1.0)
        stats = await self.server_stats(reset=True)
        elapsed = sorted(r["elapsed"] for r in runs)
        return {
            "elapsed_s": [round(e, 3) for e in elapsed],
            "median_s": round(elapsed[len(elapsed) // 2], 3),
            "clients": runs[-1]["clients"],
            "delivered": [r["delivered"] for r in runs],
            "gc_worst_ms": round(stats["gc_worst_ms"], 1),
            "gc_worst_cpu_ms": round(stats["gc_worst_cpu_ms"], 1),
            "lag_worst_ms": round(stats["lag_worst_ms"], 1),
            "bystander": await self.bystander_window(),
        }

    async def phase_restart(self) -> Answer:
        assert self.server is not None
        await asyncio.sleep(1.5)  # a fresh tick from each fleet: the count to expect
        expected = self.connected()
        attempts0 = self.connected("attempts")
        await asyncio.gather(*(f.ask({"op": "mark"}, 30) for f in self.fleets))
        await self.bystander_window()
        start = self.now()
        await self.server.kill()
        restart_s = await self.start_server()
        await self.server_stats(reset=True)
        if self.plan.storm == "burst":
            await asyncio.gather(*(f.ask({"op": "poke"}, 30) for f in self.fleets))
        t90 = t100 = None
        deadline = start + self.plan.restart_max
        while self.now() < deadline:
            await asyncio.sleep(0.5)
            back = self.connected("back")
            if t90 is None and back >= 0.9 * expected:
                t90 = self.now() - start
            if back >= expected:
                t100 = self.now() - start
                break
        await asyncio.sleep(1.5)  # a last tick from each fleet
        end = self.now()
        stats = await self.server_stats(reset=True, timeout=60)
        attempts = await self.attempt_breakdown()
        return {
            "clients": expected,
            "server_restart_s": round(restart_s, 2),
            "endpoint": stats.get("endpoint"),
            "admitted": stats.get("admitted"),
            # Reconnects the restarted server resumed (tickets sealed under its key file).
            "tickets_resumed": stats.get("tickets_resumed"),
            "admission_spacing_ms": stats.get("admission_spacing_ms"),
            **attempts,
            "t90_s": None if t90 is None else round(t90, 1),
            "t100_s": None if t100 is None else round(t100, 1),
            "back": self.connected("back"),
            "fleet_connected": self.connected(),
            "server_sessions": stats["sessions"],
            "reconnect_attempts": self.connected("attempts") - attempts0,
            "handshakes_shed": stats["handshakes_shed"],
            "server_cpu_ms_per_reconnect": round(
                1000 * cpu_seconds(self.server.pid) / max(1, stats["sessions"]), 3
            ),
            "gc_worst_ms": round(stats["gc_worst_ms"], 1),
            "gc_worst_cpu_ms": round(stats["gc_worst_cpu_ms"], 1),
            "lag_worst_ms": round(stats["lag_worst_ms"], 1),
            "bystander": await self.bystander_window(),
            **self.cpu_window(start, end),
        }

    async def attempt_breakdown(self) -> Answer:
        """Where the fleets' connect attempts since the mark went: outcome counts (per
        attempt, and per second of the storm), the TLS state of timed-out handshakes, how
        the clients learned their connection was gone, and the backoff they waited. The
        raw rows go to ``restart-attempts.json`` in the scratch directory."""
        answers = await asyncio.gather(*(f.ask({"op": "attempts"}, 60) for f in self.fleets))
        rows = [r for a in answers for r in a["rows"]]
        outcomes: dict[str, int] = {}
        seconds: dict[str, dict[int, int]] = {}
        for start, _took, what in rows:
            outcomes[what] = outcomes.get(what, 0) + 1
            per = seconds.setdefault(what, {})
            per[int(start // 5) * 5] = per.get(int(start // 5) * 5, 0) + 1
        states: dict[str, int] = {}
        lost: dict[str, int] = {}
        for a in answers:
            for k, n in a["timeout_states"].items():
                states[k] = states.get(k, 0) + n
            for k, n in a["lost"].items():
                lost[k] = lost.get(k, 0) + n
        delays = sorted(d for a in answers for d in a["delays"])
        back = sorted(t for a in answers for t in a["connected_at"])
        ok = sorted(r[1] for r in rows if r[2] == "ok")
        with contextlib.suppress(OSError):
            (self.scratch / f"{self.engine}-restart-attempts.json").write_text(
                json.dumps({"rows": rows, "back": back, "delays": delays})
            )
        return {
            "attempt_outcomes": outcomes,
            "attempt_outcomes_per_5s": {k: dict(sorted(v.items())) for k, v in seconds.items()},
            "timeout_tls_states": states,
            "lost_reasons": lost,
            "backoff_delays": {
                "count": len(delays),
                "sum_s": round(sum(delays), 1),
                "p50_s": round(percentile(delays, 0.5), 2) if delays else None,
                "max_s": round(delays[-1], 2) if delays else None,
            },
            "ok_attempt_s": {
                "p50": round(percentile(ok, 0.5), 2) if ok else None,
                "p90": round(percentile(ok, 0.9), 2) if ok else None,
            },
            "back_at_s": {
                q: round(percentile(back, f), 1) if back else None
                for q, f in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9), ("p100", 1.0))
            },
        }

    async def phase_evict(self) -> Answer:
        doomed = self.fleets[: len(self.fleets) // 3]
        survivors = self.fleets[len(self.fleets) // 3 :]
        killed = sum(int(f.tick.get("connected", 0)) for f in doomed)
        per = max(1, self.plan.evict_callers // max(1, len(survivors)))
        await asyncio.gather(
            *(f.ask({"op": "calls_start", "clients": per, "every": 1.0}, 30) for f in survivors)
        )
        lost0 = sum(int(f.tick.get("lost", 0)) for f in survivors)
        stats0 = await self.server_stats(reset=True)
        await self.bystander_window()
        start, start_mono = self.now(), time.monotonic()
        await asyncio.gather(*(f.kill() for f in doomed))
        target = stats0["sessions"] - killed
        evicted_s = None
        sessions = stats0["sessions"]
        while self.now() < start + self.plan.evict_max:
            await asyncio.sleep(1.0)
            sessions = (await self.server_stats(timeout=60))["sessions"]
            if sessions <= target:
                evicted_s = self.now() - start
                break
        end = self.now()
        stats = await self.server_stats(reset=True, timeout=60)
        answers = await asyncio.gather(*(f.ask({"op": "calls_stop"}, 30) for f in survivors))
        dead = {f"f{self.fleets.index(f)}" for f in doomed}
        evicted = stats["evicted"]
        last = stats["evicted_last_mono"]
        return {
            "killed": killed,
            "evicted_all_s": None if evicted_s is None else round(evicted_s, 1),
            # The server's own time of its last eviction (the poll above is once a second).
            "evicted_all_server_s": round(last - start_mono, 2) if last else None,
            "evict_silence_max_s": round(stats["evict_silence_max_s"], 2),
            "server_sessions": sessions,
            "evicted_dead": sum(n for p, n in evicted.items() if p in dead),
            "evicted_survivors": sum(n for p, n in evicted.items() if p not in dead),
            "survivors_lost": sum(int(f.tick.get("lost", 0)) for f in survivors) - lost0,
            "survivor_calls": summary([x for a in answers for x in a["latencies"]]),
            "gc_worst_ms": round(stats["gc_worst_ms"], 1),
            "gc_worst_cpu_ms": round(stats["gc_worst_cpu_ms"], 1),
            "lag_worst_ms": round(stats["lag_worst_ms"], 1),
            "bystander": await self.bystander_window(),
            **self.cpu_window(start, end),
        }

    async def phase_close(self) -> Answer:
        live = [f for f in self.fleets if f.alive]
        stats0 = await self.server_stats(reset=True)
        await self.bystander_window()
        start = self.now()
        answers = await asyncio.gather(
            *(f.ask({"op": "close", "fraction": 0.5}, 120) for f in live)
        )
        closed = sum(a["closed"] for a in answers)
        target = stats0["sessions"] - closed
        torn_down_s = None
        sessions = stats0["sessions"]
        while self.now() < start + self.plan.close_max:
            sessions = (await self.server_stats(timeout=60))["sessions"]
            if sessions <= target:
                torn_down_s = self.now() - start
                break
            await asyncio.sleep(0.25)
        end = self.now()
        stats = await self.server_stats(reset=True, timeout=60)
        return {
            "closed": closed,
            "client_close_s": round(max(a["elapsed"] for a in answers), 2),
            "torn_down_s": None if torn_down_s is None else round(torn_down_s, 2),
            "server_sessions": sessions,
            "gc_worst_ms": round(stats["gc_worst_ms"], 1),
            "gc_worst_cpu_ms": round(stats["gc_worst_cpu_ms"], 1),
            "lag_worst_ms": round(stats["lag_worst_ms"], 1),
            "bystander": await self.bystander_window(),
            **self.cpu_window(start, end),
        }


# -- the table --


def _get(phases: Answer, path: str) -> Any:
    value: Any = phases
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


ROWS: list[tuple[str, str, str, str]] = [
    # label, phase.key, unit, target
    ("clients connected", "connect.connected", "", "all"),
    ("connect all", "connect.elapsed_s", "s", ""),
    ("server CPU per handshake (fresh)", "connect.server_cpu_ms_per_handshake", "ms", ""),
    ("server RSS, idle", "idle.server_rss_mib", "MiB", "≤ 600 aioquic, ≤ 450 qh3 (10k)"),
    ("server RSS per session", "idle.server_kib_per_session", "KiB", ""),
    ("server CPU, idle", "idle.server_cpu_pct", "% of a core", "≤ 25 (10k)"),
    ("client RSS per Client", "idle.client_kib_per_client", "KiB", "≤ 100"),
    ("worst GC pause, idle (wall / CPU)", "idle.gc_worst_ms", "ms", "≤ 50"),
    ("worst GC pause, connect (wall / CPU)", "connect.gc_worst_ms", "ms", "≤ 50"),
    ("worst GC pause, broadcast (wall / CPU)", "broadcast.gc_worst_ms", "ms", "≤ 50"),
    ("unary p99 (sample, idle)", "unary.p99_ms", "ms", ""),
    ("broadcast 64 B with acks (median)", "broadcast.median_s", "s", "≤ 3 aioquic, ≤ 2 qh3"),
    ("restart: 90 % back", "restart.t90_s", "s", "≤ 30"),
    ("restart: all back", "restart.t100_s", "s", "≤ 60"),
    ("restart: reconnect attempts", "restart.reconnect_attempts", "", ""),
    ("restart: server CPU per session back", "restart.server_cpu_ms_per_reconnect", "ms", ""),
    ("restart: server sessions / clients back", "restart.server_sessions", "", "= back"),
    ("restart: worst GC pause (wall / CPU)", "restart.gc_worst_ms", "ms", "≤ 50"),
    ("restart: worst loop lag", "restart.lag_worst_ms", "ms", ""),
    ("restart: server / fleet CPU", "restart.server_cpu_pct", "% of a core", ""),
    ("connect: datagrams dropped by the kernel", "connect.kernel_drops", "", ""),
    ("restart: datagrams dropped by the kernel", "restart.kernel_drops", "", ""),
    ("evict: clients killed", "evict.killed", "", ""),
    ("evict: all evicted after", "evict.evicted_all_s", "s", "≤ 45"),
    ("evict: last eviction, server's clock", "evict.evicted_all_server_s", "s", "≤ 45"),
    ("evict: longest silence evicted", "evict.evict_silence_max_s", "s", "45"),
    ("evict: survivors evicted", "evict.evicted_survivors", "", "0"),
    ("evict: bystander p99", "evict.bystander.p99_ms", "ms", "≤ 100"),
    ("close: clients closed", "close.closed", "", ""),
    ("close: torn down after", "close.torn_down_s", "s", "≤ 5"),
    ("close: bystander p99", "close.bystander.p99_ms", "ms", "≤ 100"),
]


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(result: Answer) -> str:
    engines = list(result["engines"])
    lines = [
        "| measure | " + " | ".join(engines) + " | target |",
        "|---|" + "---|" * len(engines) + "---|",
    ]
    for label, path, unit, target in ROWS:
        cells = []
        for engine in engines:
            phases = result["engines"][engine]
            value = fmt(_get(phases, path))
            if path == "restart.server_sessions":
                value += f" / {fmt(_get(phases, 'restart.back'))}"
            if path.endswith(".gc_worst_ms"):
                value += f" / {fmt(_get(phases, path.replace('_ms', '_cpu_ms')))}"
            if path == "restart.server_cpu_pct":
                value += f" / {fmt(_get(phases, 'restart.fleet_cpu_pct'))}"
            cells.append(value)
        name = f"{label} ({unit})" if unit else label
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {target} |")
    return "\n".join(lines)


def write_doc(result: Answer, markdown: str) -> None:
    """Put the table (and what it was measured on) between the markers in docs/scale.md."""
    if not DOC.exists():
        return
    text = DOC.read_text()
    if TABLE_BEGIN not in text or TABLE_END not in text:
        return
    m = result["machine"]
    head = (
        f"{result['mode']} mode, {result['clients']:,} clients, {result['date'][:10]}: "
        f"{m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, Python {m['python']}; "
        f"load average {result['load_before']} before the run.\n\n"
    )
    before, rest = text.split(TABLE_BEGIN, 1)
    after = rest.split(TABLE_END, 1)[1]
    DOC.write_text(f"{before}{TABLE_BEGIN}\n{head}{markdown}\n{TABLE_END}{after}")


async def main_async(plan: Plan, write: bool, logs: Path | None = None) -> int:
    from quicflow.certs import write_dev_certs

    started = time.perf_counter()
    info = machine()
    result: Answer = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": plan.mode,
        "clients": plan.clients,
        "machine": info,
        "load_before": load(),
        "plan": asdict(plan),
        "engines": {},
        "timeline": {},
    }
    print(
        f"scale ({plan.mode}, {plan.clients:,} clients): {info['cpus']} CPUs, "
        f"load {result['load_before']}",
        file=sys.stderr,
        flush=True,
    )
    failed = False
    with tempfile.TemporaryDirectory(prefix="quicflow-scale-") as tmp:
        scratch = logs or Path(tmp)
        write_dev_certs(scratch / "certs")
        for engine in plan.engines:
            run = Run(plan, engine, scratch)
            try:
                await run.run()
            except Exception as exc:
                failed = True
                print(f"[{engine}] failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                for log in sorted(scratch.glob(f"{engine}-*.log")):
                    tail = log.read_text(errors="replace").splitlines()[-8:]
                    if tail:
                        print(f"--- {log.name} ---\n" + "\n".join(tail), file=sys.stderr)
            result["engines"][engine] = run.phases
            result["timeline"][engine] = run.timeline
    result["runtime_s"] = round(time.perf_counter() - started, 1)
    markdown = table(result)
    print(f"\nscale, {plan.mode} mode, {plan.clients:,} clients, {result['runtime_s']:.0f} s")
    print(markdown)
    if write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"scale-{datetime.date.today().isoformat()}-{plan.mode}.json"
        out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {out.relative_to(ROOT)}")
        from .scale_chart import render

        if render(result, RESULTS / f"scale-{plan.mode}.png"):
            print(f"wrote bench/results/scale-{plan.mode}.png")
        write_doc(result, markdown)
    return 1 if failed else 0


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 clients, under 2 minutes")
    parser.add_argument("--smoke", action="store_true", help="a few clients, seconds")
    parser.add_argument("--clients", type=int, help="override the plan's client count")
    parser.add_argument("--engines", help="comma-separated: aioquic,qh3")
    parser.add_argument("--fleet-nice", type=int, help="niceness of the fleets (default 10)")
    parser.add_argument("--phases", help="comma-separated subset of: " + ",".join(PHASES))
    parser.add_argument("--server-args", help="extra bench.scale_server arguments (levers)")
    parser.add_argument("--storm", choices=("pings", "burst"), help="restart: how clients learn")
    parser.add_argument("--restart-max", type=float, help="restart phase time limit (s)")
    parser.add_argument("--logs", type=Path, help="keep the children's logs (and certs) here")
    parser.add_argument("--no-write", action="store_true", help="no results file, chart or doc")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.clients:
        plan = replace(plan, clients=args.clients)
    if args.fleet_nice is not None:
        plan = replace(plan, fleet_nice=args.fleet_nice)
    if args.phases:
        plan = replace(plan, phases=tuple(args.phases.split(",")))
    if args.storm:
        plan = replace(plan, storm=args.storm)
    if args.restart_max:
        plan = replace(plan, restart_max=args.restart_max)
    if args.server_args:
        plan = replace(plan, server_args=tuple(args.server_args.split()))
    if args.engines:
        plan = replace(plan, engines=tuple(args.engines.split(",")))
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(main_async(plan, write=not args.no_write, logs=args.logs)))


if __name__ == "__main__":
    main()
