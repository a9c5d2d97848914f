-- 60 generated orders: the data the analysis tools read (created once, on first use).
CREATE TABLE IF NOT EXISTS sales AS
SELECT
    i AS order_id,
    ['north', 'south', 'east', 'west'][1 + i % 4] AS region,
    ['pen', 'ink', 'paper'][1 + i % 3] AS product,
    1 + (i * 7) % 10 AS quantity,
    round(2.5 + (i * 13) % 40 / 4.0, 2) AS unit_price
FROM range(1, 61) AS t(i)
