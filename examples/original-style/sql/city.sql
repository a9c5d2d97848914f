SELECT name, country, population
FROM (VALUES ('Lisbon', 'PT', 545000), ('Oslo', 'NO', 709000), ('Quito', 'EC', 2800000)) AS c(name, country, population)
WHERE name = $name
