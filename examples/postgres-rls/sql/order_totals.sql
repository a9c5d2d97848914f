-- Aggregates see only the caller's rows too: the filter sits under the query, not in it.
SELECT status, count(*) AS orders, sum(amount) AS total
FROM orders
GROUP BY status
ORDER BY status
