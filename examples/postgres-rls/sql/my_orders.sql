-- No WHERE on the owner: the engine filters. PostgreSQL's RLS policy (setup/postgres.sql) and DuckDB's view
-- (setup/duckdb.sql) both keep only the caller's rows, and none for an anonymous caller.
SELECT id, customer, status, amount, ordered_on
FROM orders
ORDER BY id
