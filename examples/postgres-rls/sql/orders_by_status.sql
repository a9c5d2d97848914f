-- $status and $min_amount are bound by the engine (never formatted into the text); RLS still applies.
SELECT id, customer, amount
FROM orders
WHERE status = $status AND amount >= $min_amount
ORDER BY amount DESC, id
