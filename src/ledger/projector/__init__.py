"""The projector: turns stored events into the read models, over asyncpg.

Three projections each own one PostgreSQL schema (see ``projections/*.sql``):

* ``statements``: programs, partners, balances, monthly totals and explained
  statement lines;
* ``journal``: a double-entry journal whose legs sum to zero per currency;
* ``history``: every event about a partner.

Each projection has a checkpoint, the ``notification_id`` of the last event it
applied. It advances in batches: one transaction locks the checkpoint, reads
the next events in ``notification_id`` order, writes their rows with a few
set-based statements and moves the checkpoint, so an event is applied exactly
once even when a batch fails. The event store serializes inserts with a table
lock, so ``notification_id`` order is commit order and a batch never passes
over an event that commits later with a lower position.

Entry points:

* :func:`run_projector` follows new events until stopped (``ledger project``,
  ``ledger serve``);
* :func:`catch_up` brings projections to the current head once (tests, imports,
  benchmarks);
* :func:`rebuild_projection` replays one projection into fresh tables and
  swaps them in while the API keeps serving;
* :func:`projection_status` and :func:`wait_for_position` report and await
  progress, so a read can wait for the command it follows.

Example, projecting everything recorded so far::

    applied = await catch_up(services.database)
"""

from ledger.infrastructure.schema import PROJECTION_NAMES
from ledger.projector.batch import ProjectionFailedError
from ledger.projector.rebuild import rebuild_projection
from ledger.projector.runner import catch_up, failing_projections, run_projector
from ledger.projector.status import ProjectionStatus, projection_status, wait_for_position

__all__ = [
    "PROJECTION_NAMES",
    "ProjectionFailedError",
    "ProjectionStatus",
    "catch_up",
    "failing_projections",
    "projection_status",
    "rebuild_projection",
    "run_projector",
    "wait_for_position",
]
