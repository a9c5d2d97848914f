SELECT id, username, name, department, salary, ssn,
       {'home_address': home_address, 'department': department} AS private
FROM employees
WHERE id = $id
