"""A DiscoverRunner that also writes every test's outcome to JSON (tests/django_suite/compare.sh).

``runtests.py -v2`` output cannot be compared test by test: under the parallel runner on Python
>= 3.12 a skip can be printed under another test's name. The result object in the main process
gets every event with the real test object, so this records ``{test id: [status, detail]}`` from
there and writes it to ``$FASTPOOL_DJANGO_OUTCOMES`` when the run ends. Settings select it only
when that variable is set (fastpool_suite_db.py), for the stock and the fastpool run alike.
"""

from __future__ import annotations

import json
import os
import unittest
from typing import Any, Dict, List

from django.test.runner import DiscoverRunner

# When one test reports several outcomes (subtests), the worst one is kept.
_RANK = {"skipped": 0, "expected failure": 1, "ok": 2, "unexpected success": 3, "FAIL": 4, "ERROR": 5}


class OutcomeRecordingRunner(DiscoverRunner):
    def get_resultclass(self) -> Any:
        base = super().get_resultclass() or unittest.TextTestResult
        path = os.environ["FASTPOOL_DJANGO_OUTCOMES"]

        class Recording(base):  # type: ignore[valid-type,misc]
            outcomes: Dict[str, List[str]] = {}

            def _note(self, test: Any, status: str, detail: str = "") -> None:
                test_id = getattr(test, "test_case", test).id()  # a subtest counts for its test
                old = self.outcomes.get(test_id)
                if old is None or _RANK[status] > _RANK[old[0]]:
                    self.outcomes[test_id] = [status, detail]

            def addSuccess(self, test: Any) -> None:
                super().addSuccess(test)
                self._note(test, "ok")

            def addSkip(self, test: Any, reason: str) -> None:
                super().addSkip(test, reason)
                self._note(test, "skipped", reason)

            def addError(self, test: Any, err: Any) -> None:
                super().addError(test, err)
                self._note(test, "ERROR", f"{err[0].__name__}: {err[1]}"[:300])

            def addFailure(self, test: Any, err: Any) -> None:
                super().addFailure(test, err)
                self._note(test, "FAIL", f"{err[0].__name__}: {err[1]}"[:300])

            def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
                super().addSubTest(test, subtest, err)
                if err is not None:
                    failed = issubclass(err[0], test.failureException)
                    self._note(test, "FAIL" if failed else "ERROR", f"{err[0].__name__}: {err[1]}"[:300])

            def addExpectedFailure(self, test: Any, err: Any) -> None:
                super().addExpectedFailure(test, err)
                self._note(test, "expected failure")

            def addUnexpectedSuccess(self, test: Any) -> None:
                super().addUnexpectedSuccess(test)
                self._note(test, "unexpected success")

            def stopTestRun(self) -> None:
                super().stopTestRun()
                with open(path, "w") as f:
                    json.dump({"ran": self.testsRun, "outcomes": self.outcomes}, f, indent=0, sort_keys=True)

        return Recording
