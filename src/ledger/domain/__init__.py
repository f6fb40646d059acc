"""Domain layer: money, rules and aggregates, with no I/O.

Streams are chosen so that no stream grows with a partner's history:

* ``Program``: currency, time zone, rounding mode and appended rule sets.
* ``Partner``: enrollment and tier changes.
* ``Earning``: one per activity (program + source reference), holding the
  frozen pricing and any reversals of it.
* ``Adjustment``: one per manual credit or debit (partner + idempotency key).
* ``Receipt``: one per keyed reversal or tier change, saved with its event.

Balances, statements and the journal are projections of these events.
"""
