-- Row-level filtering: each caller sees only their own expenses (none when anonymous: get_username() is NULL).
SELECT id, note, amount
FROM expenses
WHERE owner = get_username()
ORDER BY id
