"""A loopback HTTP server that answers each request with the next scripted response, byte for byte.

The replay server generates realistic streams; the corpus needs exact bodies instead (a line cut
inside a character, a connection cut mid-line, an HTML error page), so this one serves them as
written: each ``Response``'s chunks as HTTP/1.1 chunks, then the end of the body or a cut socket.
When the script is used up it answers with heartbeats until stopped, like an idle stream.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from ch_pipeline_tests.corpus.cases import Response
from ch_pipeline_tests.support.loopback_http import LoopbackHTTPServer

HEARTBEAT_INTERVAL = 0.05


class ScriptedStreamServer(LoopbackHTTPServer):
    def __init__(self, responses: Sequence[Response]) -> None:
        self.responses = list(responses)
        self.queries: list[str] = []  # the query string of every request, in order
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        super().__init__(self._handler())

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        super().__exit__(*exc_info)

    def _next(self, query: str) -> Response | None:
        with self._lock:
            self.queries.append(query)
            return self.responses.pop(0) if self.responses else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                response = server._next(urlsplit(self.path).query) or Response(())
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in response.chunks:
                        self._chunk(chunk)
                        server._stopping.wait(response.pause)
                    if response.dropped:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    elif response.status != 200 or server.responses:
                        self.wfile.write(b"0\r\n\r\n")  # the end of the body: the client reconnects
                    else:
                        while not server._stopping.wait(HEARTBEAT_INTERVAL):
                            self._chunk(b"\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading
                self.close_connection = True

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        return Handler
