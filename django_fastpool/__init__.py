"""Django database backend: ``"ENGINE": "django_fastpool"``.

Django's PostgreSQL backend on psycopg2, with every connection taken from a fastpool
:class:`fastpool.Pool` (one per database alias per process) and given back at the end of every
request. See ``django_fastpool.base``.
"""
