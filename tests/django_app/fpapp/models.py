"""``Item``: the one model the Django scenarios use.

Its table name comes from ``FP_DJ_TABLE`` so that every test works on a table of its own; the
test creates and drops that table in the shared database (``tests/test_django.py``), and
Django's ``migrate --run-syncdb`` creates it in a test database (scenario ``test_db``).
"""

import os

from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=100)
    n = models.IntegerField(default=0)

    class Meta:
        app_label = "fpapp"
        db_table = os.environ.get("FP_DJ_TABLE", "fp_dj_item")
