CREATE SCHEMA {schema};

CREATE TABLE {schema}.checkpoint (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    position bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO {schema}.checkpoint (position) VALUES (0);

CREATE TABLE {schema}.programs (
    program_id text PRIMARY KEY,
    name text NOT NULL,
    currency char(3) NOT NULL,
    time_zone text NOT NULL,
    rounding text NOT NULL,
    tiers jsonb NOT NULL DEFAULT '[]',
    rule_sets jsonb NOT NULL DEFAULT '[]',
    position bigint NOT NULL
);

CREATE TABLE {schema}.partners (
    partner_id text PRIMARY KEY,
    program_id text NOT NULL,
    display_name text NOT NULL,
    region text NOT NULL,
    channel_manager text NOT NULL,
    tier text NOT NULL,
    enrolled_on date NOT NULL,
    enrolled_at timestamptz NOT NULL,
    position bigint NOT NULL
);
CREATE INDEX ON {schema}.partners (program_id, partner_id);

-- Running totals per partner and currency, in minor units. The totals are
-- numeric because a sum of many amounts, each within bigint, can pass it,
-- and an event whose totals could not be written would stop the projection.
CREATE TABLE {schema}.balances (
    partner_id text NOT NULL,
    currency char(3) NOT NULL,
    earned_minor numeric NOT NULL DEFAULT 0,
    reversed_minor numeric NOT NULL DEFAULT 0,
    adjusted_minor numeric NOT NULL DEFAULT 0,
    balance_minor numeric NOT NULL DEFAULT 0,
    line_count bigint NOT NULL DEFAULT 0,
    position bigint NOT NULL,
    PRIMARY KEY (partner_id, currency)
);

-- Sum of statement lines per calendar month (first day of the month in the
-- program time zone), so an opening balance reads one row per past month
-- instead of every past line.
CREATE TABLE {schema}.period_totals (
    partner_id text NOT NULL,
    currency char(3) NOT NULL,
    period date NOT NULL,
    amount_minor numeric NOT NULL,
    PRIMARY KEY (partner_id, currency, period)
);

-- One row per money-moving event. amount_minor is signed: earnings and
-- credits positive, reversals and debits negative. explanation is json, not
-- jsonb: it is written once and read whole, json costs less than half as
-- much to store and to read, and it keeps the projector's key order.
CREATE TABLE {schema}.statement_lines (
    position bigint PRIMARY KEY,
    partner_id text NOT NULL,
    program_id text NOT NULL,
    currency char(3) NOT NULL,
    effective_date date NOT NULL,
    kind text NOT NULL,
    source_ref text NOT NULL,
    amount_minor bigint NOT NULL,
    explanation json NOT NULL,
    recorded_at timestamptz NOT NULL,
    event_id uuid NOT NULL,
    event_version bigint NOT NULL
);
CREATE INDEX ON {schema}.statement_lines (partner_id, effective_date, position);
