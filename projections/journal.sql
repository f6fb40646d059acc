CREATE SCHEMA {schema};

CREATE TABLE {schema}.checkpoint (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    position bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO {schema}.checkpoint (position) VALUES (0);

-- One journal entry per money-moving event.
CREATE TABLE {schema}.entries (
    position bigint PRIMARY KEY,
    event_id uuid NOT NULL,
    event_version bigint NOT NULL,
    program_id text NOT NULL,
    partner_id text NOT NULL,
    kind text NOT NULL,
    source_ref text NOT NULL,
    effective_date date NOT NULL,
    recorded_at timestamptz NOT NULL,
    memo text NOT NULL
);
CREATE INDEX ON {schema}.entries (partner_id, position);

-- Debits are positive and credits negative, in minor units. Accounts:
-- "reward_expense:<program>" and "partner_payable:<partner>".
CREATE TABLE {schema}.postings (
    position bigint NOT NULL REFERENCES {schema}.entries (position),
    leg smallint NOT NULL,
    account text NOT NULL,
    currency char(3) NOT NULL,
    amount_minor bigint NOT NULL,
    PRIMARY KEY (position, leg)
);
CREATE INDEX ON {schema}.postings (account, currency);

-- Double entry: the legs of every entry sum to zero per currency. Checked
-- once per INSERT statement over the inserted rows, so an unbalanced batch
-- rolls back whole.
CREATE FUNCTION {schema}.check_postings_balance() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unbalanced record;
BEGIN
    SELECT position, currency, sum(amount_minor) AS total
      INTO unbalanced
      FROM new_postings
     GROUP BY position, currency
    HAVING sum(amount_minor) <> 0
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal entry % does not balance in %: legs sum to %',
            unbalanced.position, unbalanced.currency, unbalanced.total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER postings_balance
    AFTER INSERT ON {schema}.postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.check_postings_balance();
