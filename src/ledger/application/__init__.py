"""Application layer: commands on the event-sourced ledger."""
