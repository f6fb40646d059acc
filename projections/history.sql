CREATE SCHEMA {schema};

CREATE TABLE {schema}.checkpoint (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    position bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO {schema}.checkpoint (position) VALUES (0);

-- Every event that concerns a partner. position is the event store's
-- notification_id: unique, so it is a cursor that never repeats or skips
-- rows, however many events share a recorded_at timestamp. data contains the
-- event's fields as JSON, money as {"amount": "5.00", "currency": "USD"} with
-- signed amounts as on statements, rates and unrounded results as strings.
-- data is json rather than jsonb for the reasons given for statement
-- explanations in statements.sql.
CREATE TABLE {schema}.partner_events (
    partner_id text NOT NULL,
    position bigint NOT NULL,
    event_type text NOT NULL,
    event_id uuid NOT NULL,
    event_version bigint NOT NULL,
    effective_date date,
    recorded_at timestamptz NOT NULL,
    actor text NOT NULL,
    correlation_id text NOT NULL,
    source_ref text NOT NULL,
    data json NOT NULL,
    PRIMARY KEY (partner_id, position)
);
