-- Parameters bind as $names; DuckDB's range() needs no table.
SELECT i AS n, i * i AS square
FROM range($low, $high + 1) AS t(i)
ORDER BY n
