"""A real EC2 API server (moto) on loopback that appends every API action it serves to a log
file, so tests count the calls cloudflow makes at the server itself.

    python3 moto_server.py PORT ACTIONS_LOG
"""
import io
import sys
import urllib.parse

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

port, log_path = int(sys.argv[1]), sys.argv[2]
app = DomainDispatcherApplication(create_backend_app)


def counting(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    action = (form.get("Action") or query.get("Action") or ["?"])[0]
    with open(log_path, "a") as log:
        log.write(action + "\n")
    return app(environ, start_response)


run_simple("127.0.0.1", port, counting, threaded=True, use_reloader=False, use_debugger=False)
