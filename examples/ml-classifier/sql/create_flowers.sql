-- 150 generated flowers: three well-separated species measured by petal size (created once, on first use).
CREATE TABLE IF NOT EXISTS flowers AS
SELECT
    i AS id,
    ['setosa', 'versicolor', 'virginica'][1 + i % 3] AS species,
    [1.4, 4.3, 5.6][1 + i % 3] + ((i * 37) % 100 - 50) / 200.0 AS petal_length,
    [0.2, 1.3, 2.1][1 + i % 3] + ((i * 53) % 100 - 50) / 400.0 AS petal_width
FROM range(1, 151) AS t(i)
