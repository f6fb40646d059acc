"""Benchmark: HTTP API latency and throughput on loopback.

Prepares a fresh database with ``examples/programs/crm-channel.toml`` published
and the real CRM set imported and projected. Then it starts ``ledger serve
--workers N`` (uvicorn processes, each with the projector, see
``--server-workers``) in a subprocess on a free port of 127.0.0.1, and drives
it with closed-loop keep-alive HTTP/1.1 clients: every client sends its next
request when the previous response arrives.

1. statement reads, ``GET /v1/partners/{id}/statements/{YYYY-MM}`` for random
   partners and months, with each concurrency of ``--get-clients``.
   Target: p99 at most 25 ms at 64 clients.
2. activity writes, ``POST /v1/programs/crm-channel/activities`` with a new
   source reference each, from ``--post-clients`` clients (default 32):
   requests per second and p99.

The client is a bare asyncio protocol on uvloop. On the 2-vCPU VM of
docs/benchmarks.md it used 0.03 to 0.04 ms of CPU per statement read, as
wrk 4.1 did. ``--client wrk`` drives the
statement reads with wrk and ``bench_api_statements.lua`` instead: one
connection per client, a random partner and month per request, every
response checked for status 200 and a statement body, for ``--get-seconds``
(``--get-requests`` does not apply). On the 2-vCPU VM of docs/benchmarks.md,
wrk's mean latency came out up to 10 times what its own throughput allows
(Little's law), so its percentiles are not trusted by default and each wrk
phase is checked against the throughput. Every phase records its client,
and the run fails when any response had another status.

The client, the server and PostgreSQL share the machine's cores, so the
script also reports how much CPU each used during each phase.

NOTE: with closed-loop clients and a saturated server, the mean latency is
about clients / throughput (Little's law), so the latency at 64 clients
mostly measures the server's throughput, not the time of one request alone.

    python scripts/bench_api.py --json-out out/api.json
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg
from bench_common import (
    BENCH_CONTEXT,
    DEFAULT_SERVER_URL,
    REPO_ROOT,
    CpuMeter,
    bench_database,
    console,
    latency_summary,
    machine_info,
    print_table,
    wire,
    write_json,
)
from generate_crm_scaleup import DEFAULT_SOURCE

from ledger.importing import import_crm_opportunities, load_program_file
from ledger.infrastructure.database import DatabaseUrl

HOST = "127.0.0.1"
_T = TypeVar("_T")
PROGRAM_FILE = REPO_ROOT / "examples" / "programs" / "crm-channel.toml"
PROGRAM_ID = "crm-channel"
STATEMENT_TARGET_P99_MS = 25.0
WRK_SCRIPT = Path(__file__).resolve().parent / "bench_api_statements.lua"
WRK_RESULT_PREFIX = "bench_api_result "
TARGET_CLIENTS = 64
# Months of the CRM data (October 2016 to December 2017).
PERIODS = [f"{year}-{month:02d}" for year, month in [(2016, 10), (2016, 11), (2016, 12)]] + [
    f"2017-{month:02d}" for month in range(1, 13)
]
SERIES = ("GTX", "MG", "GTK")


class _ResponseProtocol(asyncio.Protocol):
    """Protocol of one client connection: collects the bytes of the pending response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        # Status, end of the head and body length of the response being read.
        self._head: tuple[int, int, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is not None and not self._waiter.done():
            try:
                response = self._take_response()
            except ValueError as error:
                self._waiter.set_exception(error)
                return
            if response is not None:
                self._waiter.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("the server closed the connection"))

    def expect_response(self) -> asyncio.Future[tuple[int, bytes]]:
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def _take_response(self) -> tuple[int, bytes] | None:
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            lines = bytes(self._buffer[:end]).split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length = None
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    raise ValueError("the benchmark client reads Content-Length bodies only")
            self._head = (status, end + 4, length or 0)
        status, body_start, length = self._head
        if len(self._buffer) < body_start + length:
            return None
        body = bytes(self._buffer[body_start : body_start + length])
        del self._buffer[: body_start + length]
        self._head = None
        return status, body


class HttpConnection:
    """One keep-alive HTTP/1.1 connection that sends a request and reads the whole response.

    It is a bare asyncio protocol, so that the client costs little CPU next
    to the server it measures. NOTE: it reads bodies framed by Content-Length
    only, which is what uvicorn sends for this API, and it does not handle
    100-continue.
    """

    def __init__(self, protocol: _ResponseProtocol, port: int) -> None:
        self._protocol = protocol
        self._host = f"{HOST}:{port}".encode()

    @classmethod
    async def open(cls, port: int) -> HttpConnection:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_connection(_ResponseProtocol, HOST, port)
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(protocol, port)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send one request; return the status code and the response body."""
        head = f"{method} {path} HTTP/1.1\r\nHost: ".encode() + self._host
        if body is not None:
            head += (
                b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
            )
        response = self._protocol.expect_response()
        assert self._protocol.transport is not None
        self._protocol.transport.write(head + b"\r\n\r\n" + (body or b""))
        return await response

    async def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.close()


def _run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine`` on uvloop, which the server uses too, or on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


async def _drive(
    port: int,
    clients: int,
    make_request: Callable[[random.Random, int, int], tuple[str, str, bytes | None]],
    expected: set[int],
    max_requests: int,
    seconds: float,
    seed: int,
) -> dict[str, Any]:
    """Run ``clients`` closed-loop clients until ``max_requests`` or ``seconds`` pass."""
    latencies: list[float] = []
    failures: dict[str, int] = {}
    sample_body: list[bytes] = []
    sent = 0
    deadline = time.perf_counter() + seconds

    async def client(number: int) -> None:
        nonlocal sent
        rng = random.Random(seed * 1000 + number)
        connection = await HttpConnection.open(port)
        try:
            count = 0
            while sent < max_requests and time.perf_counter() < deadline:
                sent += 1
                method, path, body = make_request(rng, number, count)
                count += 1
                started = time.perf_counter()
                status, payload = await connection.request(method, path, body)
                latencies.append(time.perf_counter() - started)
                if status not in expected:
                    key = f"{status}: {payload[:200].decode(errors='replace')}"
                    failures[key] = failures.get(key, 0) + 1
                elif not sample_body:
                    sample_body.append(payload)
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(number) for number in range(clients)))
    elapsed = time.perf_counter() - started
    if sample_body:
        json.loads(sample_body[0])
    return {
        "clients": clients,
        "load_client": "python asyncio protocol",
        "requests": len(latencies),
        "seconds": round(elapsed, 2),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "latency": latency_summary(latencies),
        "failures": sum(failures.values()),
        "failure_examples": dict(list(failures.items())[:3]),
    }


def _drive_wrk(
    wrk: str, port: int, clients: int, partners: list[str], seconds: float, seed: int
) -> dict[str, Any]:
    """Run wrk with ``clients`` connections for ``seconds``; return the phase summary."""
    threads = max(1, min(clients, os.cpu_count() or 1))
    command = [
        wrk,
        f"--threads={threads}",
        f"--connections={clients}",
        f"--duration={max(1, round(seconds))}s",
        # Requests slower than the timeout would be counted as errors and left
        # out of the latencies, so the timeout is far above any expected one.
        "--timeout=30s",
        f"--script={WRK_SCRIPT}",
        f"http://{HOST}:{port}",
        "--",
        ",".join(partners),
        ",".join(PERIODS),
        str(seed),
    ]

    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(WRK_RESULT_PREFIX)]
    if completed.returncode != 0 or not lines:
        raise click.ClickException(
            f"wrk failed with exit status {completed.returncode}: "
            f"{(completed.stderr or completed.stdout).strip()[:500]}"
        )
    result = json.loads(lines[-1].removeprefix(WRK_RESULT_PREFIX))

    errors = result["errors"]
    # wrk also counts statuses of 400 and above in errors.status, which the
    # script's own count of bad responses already includes.
    failures = result["bad_responses"] + sum(
        errors[kind] for kind in ("connect", "read", "write", "timeout")
    )

    latency = result["latency_us"]
    elapsed = result["duration_us"] / 1e6
    # With every connection always busy, the mean latency is the connections
    # divided by the throughput (Little's law). On the 2-vCPU VM of
    # docs/benchmarks.md, wrk 4.1 reported means up to ten times that, even
    # with one connection to a trivial server. So its percentiles are suspect
    # too.
    littles_law_mean_ms = clients / (result["requests"] / elapsed) * 1000
    consistent = latency["mean"] / 1000 <= 1.1 * littles_law_mean_ms
    if not consistent:
        console.print(
            f"[yellow]warning: wrk's mean latency {latency['mean'] / 1000:.2f} ms exceeds "
            f"{clients} connections / throughput = {littles_law_mean_ms:.2f} ms by more than "
            "10%; its percentiles are unreliable, so compare with --client python[/yellow]"
        )
    return {
        "clients": clients,
        "load_client": f"wrk ({threads} threads)",
        "requests": result["requests"],
        "seconds": round(elapsed, 2),
        "requests_per_second": round(result["requests"] / elapsed, 1),
        "latency": {
            "count": result["requests"],
            "mean_ms": round(latency["mean"] / 1000, 3),
            "p50_ms": latency["p50"] / 1000,
            "p90_ms": latency["p90"] / 1000,
            "p99_ms": latency["p99"] / 1000,
            "max_ms": latency["max"] / 1000,
        },
        "littles_law_mean_ms": round(littles_law_mean_ms, 3),
        "latency_consistent_with_throughput": consistent,
        "failures": failures,
        "failure_examples": {"first bad response": result["bad_example"], "errors": errors}
        if failures
        else {},
    }


def _statement_request(
    partners: list[str],
) -> Callable[[random.Random, int, int], tuple[str, str, bytes | None]]:
    def make(rng: random.Random, _client: int, _count: int) -> tuple[str, str, bytes | None]:
        return "GET", f"/v1/partners/{rng.choice(partners)}/statements/{rng.choice(PERIODS)}", None

    return make


def _activity_request(
    partners: list[str], run_id: str
) -> Callable[[random.Random, int, int], tuple[str, str, bytes | None]]:
    def make(rng: random.Random, client: int, count: int) -> tuple[str, str, bytes | None]:
        body = {
            "partner_id": rng.choice(partners),
            "activity_type": "deal_won",
            "source_ref": f"bench-{run_id}-{client}-{count}",
            "effective_date": (date(2017, 1, 1) + timedelta(days=rng.randrange(365))).isoformat(),
            "base_amount": {"amount": f"{rng.randrange(50, 30_000)}.00", "currency": "USD"},
            "attributes": {"series": rng.choice(SERIES)},
        }
        return "POST", f"/v1/programs/{PROGRAM_ID}/activities", json.dumps(body).encode()

    return make


def _prepare(database: DatabaseUrl, source: Path) -> list[str]:
    """Publish the CRM program, import the real set, project it; return the partner ids."""
    from ledger.projector import catch_up

    services = wire(database)
    try:
        services.app.publish_program(load_program_file(PROGRAM_FILE), BENCH_CONTEXT)
        report = import_crm_opportunities(services.app, source)
    finally:
        services.close()
    console.print(f"imported {report.recorded:,} activities; projecting")
    _run(catch_up(database))
    with psycopg.connect(database.url) as conn:
        rows = conn.execute(
            "SELECT partner_id FROM statements.partners ORDER BY partner_id"
        ).fetchall()
    return [row[0] for row in rows]


def _start_server(
    database: DatabaseUrl, port: int, log_path: Path, extra_env: dict[str, str], workers: int
) -> subprocess.Popen[bytes]:
    """Start ``ledger serve`` on ``HOST``:``port`` and wait until /health returns 200."""
    ledger = shutil.which("ledger", path=str(Path(sys.executable).parent)) or "ledger"
    env = {
        **os.environ,
        **extra_env,
        "LEDGER_DATABASE_URL": database.url,
        "LEDGER_HOST": HOST,
        "LEDGER_PORT": str(port),
        "LEDGER_LOG_FORMAT": "json",
    }
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [
                ledger,
                "serve",
                "--no-demo",
                "--host",
                HOST,
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise click.ClickException(
                f"ledger serve exited with {server.returncode}; see {log_path}"
            )
        try:
            with socket.create_connection((HOST, port), timeout=1) as probe:
                probe.sendall(
                    f"GET /health HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
                )
                if probe.recv(64).startswith(b"HTTP/1.1 200"):
                    return server
        except OSError:
            pass
        time.sleep(0.2)
    server.terminate()
    raise click.ClickException(
        f"ledger serve did not respond to /health within 60 s; see {log_path}"
    )


def _stop_server(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _phase(
    label: str, dbname: str, server_pid: int, run: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    console.print(f"running {label}")
    meter = CpuMeter(dbname, server_pid)
    result = run()
    cpu = meter.read()
    result["cpu"] = cpu
    # CPU cost per request varies less with other load than throughput does.
    requests = max(1, result["requests"])
    result["cpu_ms_per_request"] = {
        party: round(cpu[f"{party}_cpu_seconds"] * 1000 / requests, 3)
        for party in ("client", "server", "postgres")
    }
    return result


@click.command()
@click.option(
    "--database-url",
    default=DEFAULT_SERVER_URL,
    show_default=True,
    help="PostgreSQL server (maintenance database) to create ledger_bench_api on.",
)
@click.option(
    "--source",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=DEFAULT_SOURCE,
    show_default=True,
    help="Folder of the real CRM CSV files.",
)
@click.option(
    "--get-clients",
    default="1,8,64",
    show_default=True,
    help="Comma-separated concurrencies of the statement phase; the target applies at 64.",
)
@click.option(
    "--get-requests",
    default=20_000,
    show_default=True,
    help="Maximum statement requests per concurrency.",
)
@click.option(
    "--get-seconds",
    default=20.0,
    show_default=True,
    help="Maximum seconds per statement concurrency.",
)
@click.option(
    "--post-clients", default=32, show_default=True, help="Concurrent clients of the write phase."
)
@click.option("--post-requests", default=10_000, show_default=True, help="Maximum activity writes.")
@click.option(
    "--post-seconds", default=30.0, show_default=True, help="Maximum seconds of the write phase."
)
@click.option(
    "--warmup-seconds",
    default=3.0,
    show_default=True,
    help="Untimed statement load before measuring.",
)
@click.option("--seed", default=2016, show_default=True, help="Seed of the request generator.")
@click.option(
    "--client",
    "load_client",
    type=click.Choice(["python", "wrk"]),
    default="python",
    show_default=True,
    help="Load generator of the statement reads: this script's client or wrk.",
)
@click.option(
    "--server-workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help=(
        "Server processes (ledger serve --workers). On the 2-core test VM one "
        "process beside PostgreSQL gave the lowest p99; see docs/benchmarks.md."
    ),
)
@click.option(
    "--server-env",
    multiple=True,
    metavar="NAME=VALUE",
    help="Extra environment variable for the server process, such as PYTHONPATH=DIR; repeatable.",
)
@click.option("--keep-database", is_flag=True, help="Keep the benchmark database after the run.")
@click.option(
    "--json-out", type=click.Path(path_type=Path), help="Write the results as JSON to this file."
)
def main(
    database_url: str,
    source: Path,
    get_clients: str,
    get_requests: int,
    get_seconds: float,
    post_clients: int,
    post_requests: int,
    post_seconds: float,
    warmup_seconds: float,
    seed: int,
    load_client: str,
    server_workers: int,
    server_env: tuple[str, ...],
    keep_database: bool,
    json_out: Path | None,
) -> None:
    """Measure statement read latency and activity write throughput over HTTP on loopback."""
    concurrencies = [int(value) for value in get_clients.split(",") if value.strip()]
    wrk = shutil.which("wrk") if load_client == "wrk" else None
    if load_client == "wrk" and wrk is None:
        raise click.ClickException("wrk is not on the PATH; install it or pass --client python")
    extra_env = dict(item.split("=", 1) for item in server_env if "=" in item)
    log_handle, log_name = tempfile.mkstemp(prefix="ledger-bench-api-", suffix=".log")
    os.close(log_handle)
    log_path = Path(log_name)
    reads: list[dict[str, Any]] = []
    with bench_database(database_url, "api", keep=keep_database) as database:
        machine = machine_info(database)
        partners = _prepare(database, source)
        port = _free_port()
        server = _start_server(database, port, log_path, extra_env, server_workers)
        try:
            statements = _statement_request(partners)

            def read_phase(clients: int, seconds: float, seed: int) -> dict[str, Any]:
                if wrk is not None:
                    return _drive_wrk(wrk, port, clients, partners, seconds, seed)
                return _run(_drive(port, clients, statements, {200}, get_requests, seconds, seed))

            read_phase(8, warmup_seconds, seed)
            for clients in concurrencies:
                reads.append(
                    _phase(
                        f"statement reads, {clients} clients",
                        database.dbname,
                        server.pid,
                        partial(read_phase, clients, get_seconds, seed + clients),
                    )
                )
            write = _phase(
                f"activity writes, {post_clients} clients",
                database.dbname,
                server.pid,
                lambda: _run(
                    _drive(
                        port,
                        post_clients,
                        _activity_request(partners, uuid.uuid4().hex[:8]),
                        {201},
                        post_requests,
                        post_seconds,
                        seed,
                    )
                ),
            )
        finally:
            _stop_server(server)

    at_target = next((read for read in reads if read["clients"] == TARGET_CLIENTS), None)
    met = (
        at_target is not None
        and at_target["failures"] == 0
        and at_target["latency"]["p99_ms"] <= STATEMENT_TARGET_P99_MS
    )
    results = {
        "partners": len(partners),
        "periods": len(PERIODS),
        "statement_reads": reads,
        "activity_writes": write,
        "statement_target_p99_ms": STATEMENT_TARGET_P99_MS,
        "statement_target_met": met if at_target is not None else None,
        "server_workers": server_workers,
        "server_log": str(log_path),
        "server_env": extra_env,
    }
    rows: list[tuple[str, Any]] = []
    for phase in [*reads, write]:
        latency = phase["latency"]
        kind = "GET statement" if phase is not write else "POST activity"
        rows.append(
            (
                f"{kind}, {phase['clients']} clients ({phase['load_client']})",
                (
                    f"{phase['requests_per_second']:,.0f} req/s, p50 {latency['p50_ms']:.1f} ms, "
                    f"p99 {latency['p99_ms']:.1f} ms, failures {phase['failures']}; CPU ms per "
                    f"request: server {phase['cpu_ms_per_request']['server']}, postgres "
                    f"{phase['cpu_ms_per_request']['postgres']}, client "
                    f"{phase['cpu_ms_per_request']['client']}; machine busy "
                    f"{phase['cpu']['machine_cores']} cores"
                ),
            )
        )
    verdict = "met" if met else "MISSED"
    if at_target is None:
        verdict = "not measured"
    rows.append(("target (statement p99 <= 25 ms at 64 clients)", verdict))
    print_table("HTTP API on loopback", rows)
    write_json(json_out, {"benchmark": "api", "machine": machine, "results": results})
    failed = sum(phase["failures"] for phase in [*reads, write])
    if failed:
        raise click.ClickException(
            f"{failed} requests failed or had an unexpected status; see failure_examples "
            f"in the results and the server log {log_path}"
        )


if __name__ == "__main__":
    main()
