"""Tests for the ``ledger`` command, in process with click's runner and as a real process.

Each test points the command at its own migrated database through
``LEDGER_DATABASE_URL`` and reads the JSON log lines from stderr.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from ledger.cli import explain, main
from ledger.infrastructure.database import DatabaseUrl
from tests.conftest import PROGRAM_FILE
from tests.integration.test_crm_import import SMALL_PIPELINE, write_crm

# Upper bound for a subprocess to start, respond or stop, so a hang fails
# the test instead of blocking the suite.
PROCESS_TIMEOUT_SECONDS = 60


@pytest.fixture
def env(database: DatabaseUrl) -> dict[str, str]:
    """Environment that points the command at this test's database."""
    return {
        "LEDGER_DATABASE_URL": database.url,
        "LEDGER_LOG_FORMAT": "json",
        "LEDGER_READ_WAIT_SECONDS": "5",
    }


@pytest.fixture
def crm_dir(tmp_path: Path) -> Path:
    return write_crm(tmp_path / "crm", SMALL_PIPELINE)


def run(args: Sequence[str], env: dict[str, str]) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def log_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def command_line(stderr: str) -> dict[str, Any]:
    """Return the command's own log line; there must be exactly one."""
    lines = [
        line
        for line in log_lines(stderr)
        if line["event"] in {"command_finished", "command_failed"}
    ]
    assert len(lines) == 1, stderr
    return lines[0]


def publish(env: dict[str, str]) -> None:
    result = run(["program", "publish", str(PROGRAM_FILE)], env)
    assert result.exit_code == 0, result.output


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# migrate, publish, settings -----------------------------------------------------------


def test_migrate_on_migrated_database(env: dict[str, str]) -> None:
    result = run(["migrate"], env)

    assert result.exit_code == 0, result.output
    assert "database is up to date" in result.stdout
    logged = command_line(result.stderr)
    assert logged["command"] == "migrate"
    assert logged["outcome"] == "ok"
    assert logged["applied"] == []


def test_publish_creates_then_is_unchanged(env: dict[str, str]) -> None:
    first = run(["program", "publish", str(PROGRAM_FILE)], env)
    second = run(["program", "publish", str(PROGRAM_FILE)], env)

    assert first.exit_code == 0
    assert "program crm-channel created" in first.stdout
    assert command_line(first.stderr)["published_versions"] == [1]
    assert second.exit_code == 0
    assert "unchanged: 1" in second.stdout
    assert command_line(second.stderr)["created"] is False


def test_publish_invalid_file_names_path(env: dict[str, str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(
        PROGRAM_FILE.read_text(encoding="utf-8").replace('rate = "0.06"', 'rate = "6%"'),
        encoding="utf-8",
    )

    result = run(["program", "publish", str(broken)], env)

    assert result.exit_code == 1
    assert "error: broken.toml: rule_sets[0].rules[1].rate is invalid" in " ".join(
        result.stderr.split()
    )
    assert "Traceback" not in result.output
    logged = command_line(result.stderr)
    assert logged["outcome"] == "failed"
    assert logged["error"] == "InvalidInputError"
    assert logged["field"] == "rule_sets[0].rules[1].rate"


def test_invalid_setting_exits_without_traceback(env: dict[str, str]) -> None:
    result = run(["status"], {**env, "LEDGER_PORT": "eighty"})

    assert result.exit_code == 1
    assert "LEDGER_PORT" in result.stderr
    assert "Traceback" not in result.output


# partner enroll ----------------------------------------------------------------------


def enroll(env: dict[str, str], *extra: str) -> Result:
    return run(
        ["partner", "enroll", "crm-channel", "ada-lovelace", "--name", "Ada Lovelace", *extra],
        env,
    )


def test_enroll_creates_then_is_unchanged(env: dict[str, str]) -> None:
    publish(env)
    details = ("--region", "West", "--manager", "Rosie Hurst", "--effective-date", "2016-03-01")

    first = enroll(env, *details)
    second = enroll(env, *details)

    assert first.exit_code == 0, first.output
    assert "partner ada-lovelace enrolled in program crm-channel from 2016-03-01" in first.stdout
    logged = command_line(first.stderr)
    assert logged["command"] == "partner.enroll"
    assert logged["created"] is True
    assert logged["position"] > 0
    assert second.exit_code == 0, second.output
    assert "already enrolled" in second.stdout
    assert command_line(second.stderr)["created"] is False
    assert command_line(second.stderr)["position"] == logged["position"]


def test_enroll_defaults_to_today(env: dict[str, str]) -> None:
    publish(env)
    # The program's time zone is UTC; reading the date around the command
    # keeps the test correct when it runs across midnight.
    before = datetime.now(UTC).date().isoformat()

    result = enroll(env)

    after = datetime.now(UTC).date().isoformat()
    assert result.exit_code == 0, result.output
    assert command_line(result.stderr)["effective_date"] in {before, after}


def test_enroll_conflict_shows_values(env: dict[str, str]) -> None:
    publish(env)
    enroll(env, "--region", "West", "--effective-date", "2016-03-01")

    result = enroll(env, "--region", "North", "--effective-date", "2016-03-01")

    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert "region is 'West', not 'North'" in message
    assert "Traceback" not in result.output
    assert command_line(result.stderr)["error"] == "ConflictError"


def test_enroll_unknown_tier_exits_1(env: dict[str, str]) -> None:
    publish(env)

    result = enroll(env, "--tier", "diamond", "--effective-date", "2016-03-01")

    assert result.exit_code == 1
    assert "diamond" in result.stderr
    assert command_line(result.stderr)["field"] == "tier"


def test_enroll_unknown_program_exits_1(env: dict[str, str]) -> None:
    result = run(["partner", "enroll", "nowhere", "ada", "--name", "Ada"], env)

    assert result.exit_code == 1
    assert "program 'nowhere' does not exist" in result.stderr
    assert "Traceback" not in result.output


def test_enrolled_partner_gets_statement(env: dict[str, str]) -> None:
    publish(env)
    enroll(env, "--effective-date", "2016-03-01")

    result = run(["statement", "ada-lovelace", "2016-03", "--json"], env)

    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert view["program_id"] == "crm-channel"
    assert view["lines"] == []


# import ------------------------------------------------------------------------------


def test_import_reports_counts(env: dict[str, str], crm_dir: Path) -> None:
    publish(env)

    result = run(["import", "crm-opportunities", str(crm_dir)], env)

    assert result.exit_code == 0, result.output
    # 4.5% of 1054, 6% of 3393 and four engagements at 5.00.
    assert "271.01 USD" in result.stdout
    logged = command_line(result.stderr)
    assert logged["command"] == "import.crm_opportunities"
    assert logged["recorded"] == 6
    assert logged["not_rewardable"] == 1
    assert logged["rejected_rows"] == 0
    assert logged["correlation_id"]


def test_import_again_records_nothing(env: dict[str, str], crm_dir: Path) -> None:
    publish(env)
    run(["import", "crm-opportunities", str(crm_dir)], env)

    again = run(["import", "crm-opportunities", "--workers", "2", str(crm_dir)], env)

    assert again.exit_code == 0
    logged = command_line(again.stderr)
    assert logged["recorded"] == 0
    assert logged["already_recorded"] == 6


def test_import_row_errors_exit_3_with_file(env: dict[str, str], tmp_path: Path) -> None:
    publish(env)
    folder = write_crm(
        tmp_path / "bad", [*SMALL_PIPELINE, "OPP00009,Ada Quill,GTX Turbo,,Engaging,2016-11-01,,"]
    )
    errors_file = tmp_path / "errors.csv"

    result = run(["import", "crm-opportunities", str(folder), "--errors", str(errors_file)], env)

    assert result.exit_code == 3
    assert "wrote 1 row errors" in result.stdout
    rows = errors_file.read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("file,row,source_ref,field,value,message")
    assert rows[1].startswith("sales_pipeline.csv,7,OPP00009,product,GTX Turbo,")
    logged = command_line(result.stderr)
    assert logged["outcome"] == "rows_rejected"
    assert logged["rejected_rows"] == 1
    assert logged["recorded"] == 6


def test_import_row_errors_listed_without_file(env: dict[str, str], tmp_path: Path) -> None:
    publish(env)
    folder = write_crm(tmp_path / "bad", ["OPP00009,Ada Quill,GTX Turbo,,Engaging,2016-11-01,,"])

    result = run(["import", "crm-opportunities", str(folder)], env)

    assert result.exit_code == 3
    assert "OPP00009" in result.stdout
    assert "row errors" in result.stdout


def test_import_errors_folder_missing(env: dict[str, str], crm_dir: Path, tmp_path: Path) -> None:
    publish(env)
    errors_file = tmp_path / "no-such-folder" / "errors.csv"

    result = run(["import", "crm-opportunities", str(crm_dir), "--errors", str(errors_file)], env)
    statement = run(["statement", "ada-quill", "2016-10"], env)

    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert f"folder {errors_file.parent}, which does not exist" in message
    assert "nothing was imported" in message
    assert "Traceback" not in result.output
    assert command_line(result.stderr)["field"] == "--errors"
    assert statement.exit_code == 1
    assert "partner 'ada-quill' does not exist" in statement.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux /dev/full")
def test_import_errors_file_write_failure(env: dict[str, str], tmp_path: Path) -> None:
    publish(env)
    folder = write_crm(
        tmp_path / "bad", [*SMALL_PIPELINE, "OPP00009,Ada Quill,GTX Turbo,,Engaging,2016-11-01,,"]
    )

    # Writing to /dev/full fails with ENOSPC, like a full disk.
    result = run(["import", "crm-opportunities", str(folder), "--errors", "/dev/full"], env)

    assert result.exit_code == 1
    assert "cannot write the row errors to /dev/full" in " ".join(result.stderr.split())
    assert "OPP00009" in result.stdout
    assert "Traceback" not in result.output
    logged = command_line(result.stderr)
    assert logged["outcome"] == "failed"
    assert logged["recorded"] == 6


def test_import_missing_folder_exits_1(env: dict[str, str], tmp_path: Path) -> None:
    publish(env)

    result = run(["import", "crm-opportunities", str(tmp_path / "nowhere")], env)

    assert result.exit_code == 1
    assert "sales_teams.csv not found" in result.stderr
    assert "Traceback" not in result.output


def test_import_unpublished_program_exits_1(env: dict[str, str], crm_dir: Path) -> None:
    result = run(["import", "crm-opportunities", str(crm_dir), "--program", "other"], env)

    assert result.exit_code == 1
    assert "program 'other' does not exist" in result.stderr
    assert command_line(result.stderr)["error"] == "NotFoundError"


# statement, status, rebuild ----------------------------------------------------------------


def test_statement_json_after_import(env: dict[str, str], crm_dir: Path) -> None:
    publish(env)
    run(["import", "crm-opportunities", str(crm_dir)], env)

    result = run(["statement", "ada-quill", "2016-11", "--json"], env)

    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert view["opening_balance"] == {"amount": "10.00", "currency": "USD"}
    assert view["closing_balance"] == {"amount": "57.43", "currency": "USD"}
    assert [line["source_ref"] for line in view["lines"]] == ["OPP00001:won"]
    assert view["lines"][0]["amount"] == {"amount": "47.43", "currency": "USD"}
    assert view["lines"][0]["explanation"]["rule_id"] == "won-gtx"


def test_statement_table_after_import(env: dict[str, str], crm_dir: Path) -> None:
    publish(env)
    run(["import", "crm-opportunities", str(crm_dir)], env)

    result = run(["statement", "ada-quill", "2016-10"], env)

    assert result.exit_code == 0, result.output
    assert "OPP00001:engaged" in result.stdout
    assert "OPP00002:engaged" in result.stdout
    assert "opening balance  0.00 USD" in result.stdout
    assert "closing balance  10.00 USD" in result.stdout
    logged = command_line(result.stderr)
    assert logged["partner_id"] == "ada-quill"
    assert logged["lines"] == 2


def test_statement_unknown_partner_exits_1(env: dict[str, str], crm_dir: Path) -> None:
    publish(env)
    run(["import", "crm-opportunities", str(crm_dir)], env)

    result = run(["statement", "nobody", "2016-10"], env)

    assert result.exit_code == 1
    assert "partner 'nobody' does not exist" in result.stderr
    assert "Traceback" not in result.output


def test_statement_bad_period_exits_1(env: dict[str, str], crm_dir: Path) -> None:
    publish(env)
    run(["import", "crm-opportunities", str(crm_dir)], env)

    result = run(["statement", "ada-quill", "2016-13"], env)

    assert result.exit_code == 1
    assert "YYYY-MM" in result.stderr


@pytest.mark.parametrize("period", ["9999-12", "0000-01"])
def test_statement_period_out_of_range(env: dict[str, str], period: str) -> None:
    result = run(["statement", "ada-quill", period], env)

    assert result.exit_code == 1
    assert "is out of range" in result.stderr
    assert "Traceback" not in result.output
    assert command_line(result.stderr)["field"] == "period"


@pytest.mark.parametrize(
    "args",
    [["status"], ["statement", "ada-quill", "2016-10"], ["project"], ["rebuild", "history"]],
)
def test_read_commands_need_existing_database(tmp_path: Path, args: list[str]) -> None:
    data_dir = tmp_path / "elsewhere"
    # None removes the variable from the command's environment.
    no_database: dict[str, str | None] = {
        "LEDGER_DATABASE_URL": None,
        "LEDGER_DATA_DIR": str(data_dir),
        "LEDGER_LOG_FORMAT": "json",
    }

    result = CliRunner().invoke(main, args, env=no_database, catch_exceptions=False)

    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert f"no ledger database in {data_dir}" in message
    assert "LEDGER_DATA_DIR" in message
    assert "LEDGER_DATABASE_URL" in message
    assert "Traceback" not in result.output
    assert command_line(result.stderr)["field"] == "LEDGER_DATA_DIR"
    assert not data_dir.exists()


def test_statement_min_position_not_reached(env: dict[str, str], crm_dir: Path) -> None:
    publish(env)
    run(["import", "crm-opportunities", str(crm_dir)], env)

    result = run(
        ["statement", "ada-quill", "2016-10", "--min-position", "1000000"],
        {**env, "LEDGER_READ_WAIT_SECONDS": "0.1"},
    )

    assert result.exit_code == 1
    assert "has not reached position 1000000" in " ".join(result.stderr.split())
    assert command_line(result.stderr)["error"] == "ProjectionLagError"


def test_status_json_reports_lag(env: dict[str, str], crm_dir: Path) -> None:
    publish(env)
    run(["import", "crm-opportunities", str(crm_dir)], env)
    run(["statement", "ada-quill", "2016-10"], env)

    result = run(["status", "--json"], env)

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["head"] == 2 + 3 + 6
    assert "@" in document["database"] or "host=" in document["database"]
    projections = {item["name"]: item for item in document["projections"]}
    assert projections["statements"]["lag"] == 0
    assert projections["journal"]["lag"] == document["head"]
    assert {item["ddl_changed"] for item in projections.values()} == {False}


def test_rebuild_replays_every_event(env: dict[str, str], crm_dir: Path) -> None:
    publish(env)
    run(["import", "crm-opportunities", str(crm_dir)], env)

    result = run(["rebuild", "history"], env)
    status = json.loads(run(["status", "--json"], env).stdout)

    assert result.exit_code == 0, result.output
    assert "rebuilt projection history from 11 events" in result.stdout
    assert command_line(result.stderr)["events"] == 11
    history = next(item for item in status["projections"] if item["name"] == "history")
    assert history["lag"] == 0


def test_rebuild_unknown_projection_is_usage_error(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["rebuild", "ledger"], env=env)

    assert result.exit_code == 2
    assert "statements" in result.stderr


def test_explain_summarises_lines() -> None:
    assert (
        explain(
            "earning",
            {
                "rule_id": "won-mg",
                "rate": "0.06",
                "base": "3393.00",
                "unrounded": "203.58",
                "rounding": "half-up",
            },
            "USD",
        )
        == "won-mg: 6% of 3393.00 USD = 203.58 (half-up)"
    )
    assert explain("earning", {"rule_id": "engaged", "fixed": "5.00"}, "USD") == (
        "engaged: fixed 5.00 USD"
    )
    assert explain("reversal", {"rule_id": "won-mg", "reason": "refund"}, "USD") == (
        "reverses won-mg: refund"
    )
    assert explain("adjustment", {"reason": "goodwill"}, "USD") == "goodwill"
    assert explain(
        "earning", {"rule_id": "engaged", "fixed": "5.00", "rule_set_version": 2}, "USD"
    ) == ("rule set 2, engaged: fixed 5.00 USD")
    assert explain(
        "reversal",
        {
            "rule_id": "won-mg",
            "rule_set_version": 1,
            "reason": "partial return",
            "base": "1000.00",
            "rate": "0.06",
            "unrounded": "60.00",
        },
        "USD",
    ) == ("reverses rule set 1, won-mg: 6% of 1000.00 USD = 60.00; partial return")


# Real processes: project and serve -----------------------------------------------------


@pytest.fixture
def process_env(env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **env}


class LoggedProcess:
    """A ``ledger`` subprocess whose JSON log lines are read on a thread."""

    def __init__(self, args: Sequence[str], env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.logged: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, event: str, count: int = 1) -> None:
        """Read log lines until ``event`` was logged ``count`` times; fail on exit or timeout."""
        deadline = time.monotonic() + PROCESS_TIMEOUT_SECONDS
        while sum(1 for logged in self.logged if logged["event"] == event) < count:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                pytest.fail(
                    f"{event!r} not logged within {PROCESS_TIMEOUT_SECONDS} s: {self.logged}"
                )
            if line is None:
                pytest.fail(f"process exited before logging {event!r}: {self.logged}")
            if line.startswith("{"):
                self.logged.append(json.loads(line))

    def stop(self, signal_number: int) -> int:
        """Send ``signal_number``, then wait for the exit (see :meth:`finish`)."""
        self.process.send_signal(signal_number)
        return self.finish()

    def finish(self) -> int:
        """Wait for the exit, read the remaining log lines and return the exit status."""
        status = self.process.wait(timeout=PROCESS_TIMEOUT_SECONDS)
        while (line := self.lines.get(timeout=PROCESS_TIMEOUT_SECONDS)) is not None:
            if line.startswith("{"):
                self.logged.append(json.loads(line))
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def start(process_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Start ``ledger`` subprocesses for one test; kill any still running at the end."""
    started: list[LoggedProcess] = []

    def start_process(*args: str) -> LoggedProcess:
        process = LoggedProcess(args, process_env, tmp_path)
        started.append(process)
        return process

    yield start_process
    for process in started:
        process.kill()


def finished_line(process: LoggedProcess) -> dict[str, Any]:
    [line] = [logged for logged in process.logged if logged["event"] == "command_finished"]
    return line


def test_project_follows_until_sigterm(env: dict[str, str], crm_dir: Path, start: Any) -> None:
    publish(env)
    run(["import", "crm-opportunities", str(crm_dir)], env)

    projector = start("project")
    projector.wait_for("projector.caught_up", count=3)
    status = json.loads(run(["status", "--json"], env).stdout)
    exit_status = projector.stop(signal.SIGTERM)

    assert {item["lag"] for item in status["projections"]} == {0}
    assert exit_status == 0
    assert finished_line(projector)["command"] == "project"
    assert finished_line(projector)["outcome"] == "ok"


def test_serve_demo_loads_crm_and_serves(
    crm_dir: Path, start: Any, process_env: dict[str, str]
) -> None:
    port = free_port()
    args = [
        "serve",
        "--demo",
        "--port",
        str(port),
        "--crm-dir",
        str(crm_dir),
        "--program-file",
        str(PROGRAM_FILE),
    ]

    first = start(*args)
    first.wait_for("api_started")
    first.wait_for("projector.caught_up", count=3)
    response = httpx.get(
        f"http://127.0.0.1:{port}/v1/partners/ada-quill/statements/2016-11", timeout=10
    )
    first_status = first.stop(signal.SIGTERM)
    second = start(*args)
    second.wait_for("api_started")
    second_status = second.stop(signal.SIGINT)

    assert response.status_code == 200
    assert response.json()["closing_balance"] == {"amount": "57.43", "currency": "USD"}
    assert first_status == 0
    assert finished_line(first)["recorded"] == 6
    assert finished_line(first)["stopped_by"] == "signal"
    assert second_status == 0
    assert finished_line(second)["recorded"] == 0
    assert finished_line(second)["already_recorded"] == 6


def test_serve_workers_share_projections(
    crm_dir: Path, start: Any, process_env: dict[str, str]
) -> None:
    port = free_port()
    server = start(
        "serve",
        "--demo",
        "--workers",
        "2",
        "--port",
        str(port),
        "--crm-dir",
        str(crm_dir),
        "--program-file",
        str(PROGRAM_FILE),
    )

    server.wait_for("api_started", count=2)
    server.wait_for("projector.lock_acquired", count=3)
    server.wait_for("projector.lock_waiting", count=3)
    server.wait_for("projector.caught_up", count=3)
    statements = [
        httpx.get(f"http://127.0.0.1:{port}/v1/partners/ada-quill/statements/2016-11", timeout=10)
        for _ in range(4)
    ]
    health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
    # While the first worker shuts down, the standby may take the locks over
    # before it stops too, so count only the acquisitions before the signal.
    acquired = [logged for logged in server.logged if logged["event"] == "projector.lock_acquired"]
    status = server.stop(signal.SIGTERM)

    started = [logged for logged in server.logged if logged["event"] == "api_started"]
    assert len({logged["pid"] for logged in started}) == 2
    projector_lines = [logged for logged in server.logged if "projection" in logged]
    assert sorted({logged["projection"] for logged in acquired}) == [
        "history",
        "journal",
        "statements",
    ], projector_lines
    for response in statements:
        assert response.status_code == 200
        assert response.json()["closing_balance"] == {"amount": "57.43", "currency": "USD"}
    assert health.status_code == 200
    assert health.json()["projector"] == "running"
    assert status == 0
    assert finished_line(server)["outcome"] == "ok"


def test_serve_demo_without_crm_data_exits_1(start: Any, tmp_path: Path) -> None:
    server = start("serve", "--demo", "--port", str(free_port()), "--crm-dir", str(tmp_path))

    status = server.finish()

    assert status == 1
    [failed] = [logged for logged in server.logged if logged["event"] == "command_failed"]
    assert failed["command"] == "serve"
    assert failed["field"] == "crm_dir"
