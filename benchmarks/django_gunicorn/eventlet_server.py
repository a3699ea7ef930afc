"""The site under eventlet: ``eventlet.wsgi.server`` in N forked processes sharing one socket.

gunicorn 26+ has no eventlet worker (deprecated in 25, removed in 26), so this small runner
stands in for ``gunicorn -k eventlet -w N``: monkey-patch first, bind, fork N workers, each of
which imports the WSGI application (app.py's by default), applies psycogreen's eventlet callback
when BENCH_PSYCOGREEN=1 (as gunicorn's post_worker_init would) and serves with up to 1000 green
threads. tests/test_wsgi_servers.py serves its test site with it too.

Usage: python eventlet_server.py HOST:PORT WORKERS [MODULE:ATTRIBUTE]
(the module is imported from this directory or the current one; default app:application)
"""

import warnings

warnings.filterwarnings("ignore", message=r"(?s).*[Ee]ventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()

import importlib  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import eventlet.wsgi  # noqa: E402


def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    workers = int(sys.argv[2])
    module_name, _, attr = (sys.argv[3] if len(sys.argv) > 3 else "app:application").partition(":")
    sock = eventlet.listen((host, int(port)), backlog=2048)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.getcwd()]
            application = getattr(importlib.import_module(module_name), attr or "application")

            if os.environ.get("BENCH_PSYCOGREEN") == "1":
                import psycogreen.eventlet

                psycogreen.eventlet.patch_psycopg()
            eventlet.wsgi.server(sock, application, log_output=False, max_size=1000,
                                 keepalive=True, debug=False)
            os._exit(0)
        children.append(pid)

    def stop(signum, frame):
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
