-- DuckDB side of the example: run through mxcp, which provides get_username() (the view uses it):
--   mxcp query --file setup/duckdb.sql
-- The rows live in orders_all; endpoints read the view `orders`, which keeps the caller's rows, as PostgreSQL's
-- row-level security policy does for the warehouse profile. (A view filters what the endpoints read; it does not
-- stop SQL that names orders_all. PostgreSQL's policy holds for any statement the mxcp role runs.)
CREATE OR REPLACE TABLE orders_all (
    id INTEGER PRIMARY KEY,
    owner VARCHAR NOT NULL,
    customer VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    amount DECIMAL(10, 2) NOT NULL,
    ordered_on DATE NOT NULL
);

INSERT INTO orders_all VALUES
    (1, 'alice', 'Acme',     'shipped',   120.00, DATE '2024-01-05'),
    (2, 'alice', 'Globex',   'pending',    75.50, DATE '2024-02-11'),
    (3, 'bob',   'Umbrella', 'shipped',    42.00, DATE '2024-02-20'),
    (4, 'alice', 'Initech',  'shipped',   310.00, DATE '2024-03-02'),
    (5, 'bob',   'Acme',     'cancelled',  15.25, DATE '2024-03-15'),
    (6, 'carol', 'Hooli',    'pending',   999.99, DATE '2024-03-20');

-- get_username() is NULL for an anonymous caller, and NULL = owner is never true: no rows.
CREATE OR REPLACE VIEW orders AS
SELECT * FROM orders_all WHERE owner = get_username();
