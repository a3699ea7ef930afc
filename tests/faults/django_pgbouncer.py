"""Django through PgBouncer (transaction mode): ``python django_pgbouncer.py`` (subprocess of
tests/test_pgbouncer.py; Django settings are process-global).

Environment: ``FP_BOUNCER_PORT`` (PgBouncer on 127.0.0.1, database "postgres", user "postgres"),
``FASTPOOL_IMPL``. Settings are the ones RELIABILITY.md recommends: ENGINE django_fastpool,
``DISABLE_SERVER_SIDE_CURSORS: True``; TIME_ZONE "Asia/Tokyo" with USE_TZ=False so that the
backend's per-connection ``SET TIME ZONE`` matters.

Runs: DDL, bulk_create, filter/count/update, ``iterator()``, ``atomic()`` with a nested atomic
that rolls back (a savepoint) and an explicit savepoint rollback, ``select_for_update`` in
atomic, and 4 threads x 15 "requests" (``close_old_connections`` around each) while a plain
client of the same PgBouncer keeps changing its own TimeZone. Then, on a second alias with
server-side cursors left on, ``iterator()`` outside and inside ``atomic()`` while another client
takes the cursor's server connection. Prints one ``RESULT {json}``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading

import django
import psycopg2
from django.conf import settings

PORT = os.environ["FP_BOUNCER_PORT"]
IMPL = os.environ["FASTPOOL_IMPL"]

settings.configure(
    DEBUG=False,
    USE_TZ=False,
    TIME_ZONE="Asia/Tokyo",
    INSTALLED_APPS=[],
    DATABASES={
        "default": {
            "ENGINE": "django_fastpool",
            "NAME": "postgres",
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": PORT,
            # PgBouncer transaction mode: no WITH HOLD cursors across transactions
            "DISABLE_SERVER_SIDE_CURSORS": True,
            "OPTIONS": {"pool": {"min_size": 0, "max_size": 4, "timeout": 10}},
        },
        # the same database with Django's default server-side cursors, to show what breaks
        "ssc": {
            "ENGINE": "django_fastpool",
            "NAME": "postgres",
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": PORT,
            "DISABLE_SERVER_SIDE_CURSORS": False,
            "OPTIONS": {"pool": {"min_size": 0, "max_size": 1, "timeout": 10}},
        },
    },
)
django.setup()

from django.db import connection, connections, models, transaction  # noqa: E402
from django.db import close_old_connections  # noqa: E402

import fastpool  # noqa: E402


class Item(models.Model):
    name = models.CharField(max_length=50)
    n = models.IntegerField(default=0)

    class Meta:
        app_label = "fp_bouncer"
        db_table = "fp_bouncer_item"


class Boom(Exception):
    pass


def main() -> None:
    assert fastpool.__impl__ == IMPL, (fastpool.__impl__, IMPL)
    errors: list = []
    timezones: set = set()
    with connection.schema_editor() as editor:
        editor.create_model(Item)
    try:
        Item.objects.bulk_create([Item(name=f"i{i}", n=i) for i in range(50)])
        assert Item.objects.filter(n__lt=10).count() == 10
        Item.objects.filter(n__gte=40).update(n=models.F("n") + 100)
        assert Item.objects.filter(n__gte=140).count() == 10
        # iterator(): a client-side cursor (DISABLE_SERVER_SIDE_CURSORS), chunked
        assert len(list(Item.objects.order_by("id").iterator(chunk_size=7))) == 50

        # atomic + savepoints
        with transaction.atomic():
            Item.objects.create(name="outer")
            try:
                with transaction.atomic():  # savepoint
                    Item.objects.create(name="inner")
                    raise Boom()
            except Boom:
                pass
            sid = transaction.savepoint()
            Item.objects.create(name="explicit")
            transaction.savepoint_rollback(sid)
            locked = Item.objects.select_for_update().get(name="i0")
            locked.n = -1
            locked.save()
        outer_committed = Item.objects.filter(name="outer").exists() and Item.objects.get(name="i0").n == -1
        savepoint_rolled_back = not Item.objects.filter(name__in=["inner", "explicit"]).exists()
        connection.close()

        # concurrent "requests" while another client changes its own TimeZone
        stop = threading.Event()

        def interferer() -> None:
            c = psycopg2.connect(f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres")
            c.autocommit = True
            try:
                while not stop.is_set():
                    with c.cursor() as cur:
                        cur.execute("SET TIME ZONE %s", (random.choice(["UTC", "America/New_York"]),))
                        cur.execute("SELECT 1")
            finally:
                c.close()

        def requests(w: int) -> None:
            rnd = random.Random(w)
            for r in range(15):
                close_old_connections()
                try:
                    with connection.cursor() as cur:
                        cur.execute("SELECT current_setting('TimeZone')")
                        timezones.add(cur.fetchone()[0])
                    with transaction.atomic():
                        it = Item.objects.select_for_update().get(name=f"i{rnd.randrange(1, 50)}")
                        it.n += 1
                        it.save()
                        if r % 4 == 3:
                            try:
                                with transaction.atomic():
                                    Item.objects.create(name="never")
                                    raise Boom()
                            except Boom:
                                pass
                    Item.objects.filter(name__startswith="i").count()
                except Exception as exc:
                    errors.append(repr(exc))
                finally:
                    close_old_connections()
            connection.close()

        it = threading.Thread(target=interferer)
        it.start()
        threads = [threading.Thread(target=requests, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stop.set()
        it.join(10)
        items = Item.objects.count()

        # Server-side cursors (DISABLE_SERVER_SIDE_CURSORS False): iterator() outside atomic
        # declares a WITH HOLD cursor and fetches chunks in later transactions; once another
        # client holds that server connection (PgBouncer hands out the most recent one), the next
        # FETCH runs on another server connection where the cursor does not exist.
        ssc_error = None
        z = psycopg2.connect(f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres")
        try:
            chunks = Item.objects.using("ssc").order_by("id").iterator(chunk_size=2)
            next(chunks)
            with z.cursor() as cur:
                cur.execute("SELECT 1")  # z in a transaction on the cursor's server connection
            try:
                for _ in range(10):
                    next(chunks)
            except Exception as exc:
                ssc_error = f"{type(exc).__module__}.{type(exc).__name__}: {str(exc).strip()}"
            z.rollback()
            # ... while inside atomic() the whole iteration is one transaction: fine
            with transaction.atomic(using="ssc"):
                in_atomic = len(list(Item.objects.using("ssc").iterator(chunk_size=2)))
        finally:
            z.close()
            connections["ssc"].close()
        never = Item.objects.filter(name="never").count()
        pool = connection.pool
        connection.close()
        stats = pool.stats()
    finally:
        with connection.schema_editor() as editor:
            editor.delete_model(Item)
        connections.close_all()
    print("RESULT " + json.dumps({
        "impl": IMPL, "errors": errors[:10], "items": items, "expected_items": 51, "never": never,
        "outer_committed": outer_committed, "savepoint_rolled_back": savepoint_rolled_back and never == 0,
        "timezones": sorted(timezones), "pool_stats": stats,
        "ssc_outside_atomic_error": ssc_error, "ssc_in_atomic_rows": in_atomic,
    }, sort_keys=True), flush=True)


if __name__ == "__main__":
    sys.exit(main())
