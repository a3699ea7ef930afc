"""Misuse a type checker must catch (tests/test_typing.py): each line marked ``# E: code``
must get exactly that mypy error, and no other line any."""

import fastpool

pool = fastpool.Pool("dbname=app", open=False)
fastpool.Pool(conninfo=42)  # E: arg-type
fastpool.Pool(max_sizee=3)  # E: call-arg
fastpool.Pool(timeout="30")  # E: arg-type
pool.getconn(timeout="x")  # E: arg-type
pool.putconn(123)  # E: arg-type
pool.no_such_method()  # E: attr-defined
with pool.connection() as conn:
    conn.no_such_method()  # E: attr-defined
