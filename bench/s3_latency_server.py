"""moto's S3 on 127.0.0.1 with a fixed delay per GetObject, like a real S3 round trip (bench only).

  python bench/s3_latency_server.py PORT DELAY_SECONDS
Without the delay a local moto server answers in well under a millisecond and is CPU-bound on the same
cores as the client, which hides what concurrent fetching buys against real S3 (tens of ms per request).
"""
import sys
import time

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

port, delay = int(sys.argv[1]), float(sys.argv[2])
app = DomainDispatcherApplication(create_backend_app)


def delayed(environ, start_response):
    if delay and environ["REQUEST_METHOD"] == "GET" and "list-type" not in environ.get("QUERY_STRING", ""):
        time.sleep(delay)
    return app(environ, start_response)


make_server("127.0.0.1", port, delayed, threaded=True, request_handler=MotoRequestHandler).serve_forever()
