"""A loopback reward server for tests that misbehaves at random, with a seed.

    with FlakyRewardServer(near_a, seed=3, faults=FAULTS, timeout=0.4) as server:
        reward = HttpReward(server.url, timeout=server.timeout, retries=8, backoff=0.0)

Each request is answered by one action: `ok` (the scores of `score_fn`), `slow` (the same after
a third of the client's timeout), `error_500`, `hang` (no reply until past the client's timeout,
then the connection is dropped), or `close` (the connection is closed without a reply). The
action is the next entry of `plan` if there is one (an action name, or raw bytes sent as a 200
reply), else `down`'s `error_500`, else a draw from a seeded `random.Random` with the weights of
`faults` (the rest of the probability is `ok`). Bounded: 127.0.0.1 only, daemon threads, at
most `max_requests` requests (later ones get a 503), every sleep shorter than timeout + 0.3 s.
"""

from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACTIONS = ("ok", "slow", "error_500", "hang", "close")


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def do_POST(self):  # noqa: N802 - http.server's naming
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))  # read first: no reset
        owner = self.server.owner
        action = owner._next_action()
        if action == "budget":
            return self._reply(503, b"request budget of the test server exhausted", "text/plain")
        if isinstance(action, bytes):
            return self._reply(200, action)
        if action == "error_500":
            return self._reply(500, b"overloaded", "text/plain")
        if action == "close":
            self.close_connection = True  # nothing written: the client sees the connection end
            return None
        if action == "hang":
            time.sleep(owner.timeout + 0.2)  # bounded: past the client's timeout, then drop it
            self.close_connection = True
            return None
        if action == "slow":
            time.sleep(owner.timeout / 3)
        rewards = [owner.score_fn([p], [c])[0] for p, c in zip(request["prompts"], request["completions"])]
        body = json.dumps({"rewards": rewards}).encode()
        try:
            self._reply(200, body)
        except OSError:  # the client gave up first: this reply reached nobody
            return None
        with owner.lock:
            owner.answered.append(list(request["completions"]))
        return None

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: "FlakyRewardServer"


class FlakyRewardServer:
    """A reward server on 127.0.0.1 (see the module docstring); `actions` logs what each request got,
    `answered` the completions of every reply that was sent in full."""

    def __init__(self, score_fn, *, seed: int = 0, faults: dict[str, float] | None = None, timeout: float = 0.4,
                 max_requests: int = 200):
        unknown = set(faults or {}) - set(ACTIONS)
        if unknown:
            raise ValueError(f"unknown actions {sorted(unknown)}; known: {ACTIONS}")
        self.score_fn, self.timeout, self.max_requests = score_fn, timeout, max_requests
        self.faults = dict(faults or {})
        self.rng = random.Random(seed)
        self.plan: list[str | bytes] = []
        self.down = False
        self.actions: list[str] = []
        self.answered: list[list] = []
        self.lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/score"

    def _next_action(self) -> str | bytes:
        with self.lock:
            if len(self.actions) >= self.max_requests:
                action: str | bytes = "budget"
            elif self.plan:
                action = self.plan.pop(0)
            elif self.down:
                action = "error_500"
            else:
                action = self._draw()
            self.actions.append(action if isinstance(action, str) else "body")
            return action

    def _draw(self) -> str:
        u, edge = self.rng.random(), 0.0
        for action, weight in self.faults.items():
            edge += weight
            if u < edge:
                return action
        return "ok"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FlakyRewardServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
