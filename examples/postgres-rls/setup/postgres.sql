-- PostgreSQL side of the example. Run in the database mxcp will use, as a superuser or as the database's owner
-- with CREATEROLE (it creates the login role mxcp_reader unless that exists):
--   psql "host=... dbname=shop user=postgres" -f setup/postgres.sql
-- Then give the login role its own password: ALTER ROLE mxcp_reader PASSWORD '...';

CREATE TABLE orders (
    id integer PRIMARY KEY,
    owner text NOT NULL CHECK (owner <> ''),
    customer text NOT NULL,
    status text NOT NULL,
    amount numeric(10, 2) NOT NULL,
    ordered_on date NOT NULL
);

INSERT INTO orders VALUES
    (1, 'alice', 'Acme',     'shipped',   120.00, DATE '2024-01-05'),
    (2, 'alice', 'Globex',   'pending',    75.50, DATE '2024-02-11'),
    (3, 'bob',   'Umbrella', 'shipped',    42.00, DATE '2024-02-20'),
    (4, 'alice', 'Initech',  'shipped',   310.00, DATE '2024-03-02'),
    (5, 'bob',   'Acme',     'cancelled',  15.25, DATE '2024-03-15'),
    (6, 'carol', 'Hooli',    'pending',   999.99, DATE '2024-03-20');

-- Row-level security: every statement on orders sees only the rows whose owner is the caller mxcp put in the
-- transaction's setting mxcp.username (SET LOCAL, one transaction per call). FORCE makes it hold for the table's
-- owner too. With no caller the setting is missing: current_setting(..., true) is NULL (or '' on a connection
-- where an earlier transaction set it), and no row matches either (owner is never '').
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE orders FORCE ROW LEVEL SECURITY;
CREATE POLICY orders_of_the_caller ON orders
    FOR SELECT
    USING (owner = current_setting('mxcp.username', true));

-- The role mxcp connects as: may log in and read, owns nothing, is no superuser and cannot bypass RLS.
-- Roles belong to the whole server, so an existing one (another database of the example) is reused.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mxcp_reader') THEN
        CREATE ROLE mxcp_reader LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD 'change-me';
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO mxcp_reader;
GRANT SELECT ON orders TO mxcp_reader;
