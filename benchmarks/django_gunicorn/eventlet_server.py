"""The site under eventlet: ``eventlet.wsgi.server`` in N forked processes sharing one socket.

gunicorn 23+ has no working eventlet worker (deprecated in 22, removed later), so this small
runner stands in for ``gunicorn -k eventlet -w N``: monkey-patch first, bind, fork N workers,
each of which imports app.py, applies psycogreen's eventlet callback when BENCH_PSYCOGREEN=1
(as gunicorn's post_worker_init would) and serves with up to 1000 green threads.

Usage: python eventlet_server.py HOST:PORT WORKERS
"""

import warnings

warnings.filterwarnings("ignore", message=r"(?s).*[Ee]ventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()

import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import eventlet.wsgi  # noqa: E402


def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    workers = int(sys.argv[2])
    sock = eventlet.listen((host, int(port)), backlog=2048)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            import app

            if os.environ.get("BENCH_PSYCOGREEN") == "1":
                import psycogreen.eventlet

                psycogreen.eventlet.patch_psycopg()
            eventlet.wsgi.server(sock, app.application, log_output=False, max_size=1000,
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
