import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlhf.rewards import HttpReward, RewardError, resolve_reward


def _reply(handler, status, body: bytes, content_type="application/json"):
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def good(handler, request):
    _reply(handler, 200, json.dumps({"rewards": [float(len(c)) if c else None for c in request["completions"]]}).encode())


def error_500(handler, request):
    _reply(handler, 500, b"overloaded", "text/plain")


def error_400(handler, request):
    _reply(handler, 400, b"bad request: no prompts", "text/plain")


def wrong_length(handler, request):
    _reply(handler, 200, json.dumps({"rewards": [1.0]}).encode())


def not_json(handler, request):
    _reply(handler, 200, b"<html>oops</html>", "text/html")


def no_rewards_key(handler, request):
    _reply(handler, 200, json.dumps({"scores": [1.0, 2.0]}).encode())


def string_reward(handler, request):
    _reply(handler, 200, json.dumps({"rewards": [1.0, "high"]}).encode())


def slow(handler, request):
    time.sleep(1.0)
    try:
        good(handler, request)
    except OSError:  # the client gave up first
        pass


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        state = self.server.state
        with state["lock"]:
            state["requests"].append({"path": self.path, "body": request, "auth": self.headers.get("Authorization")})
            action = state["plan"].pop(0) if state["plan"] else good
        action(self, request)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    httpd.state = {"lock": threading.Lock(), "plan": [], "requests": []}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)
    assert not thread.is_alive()


@pytest.fixture
def url(server):
    server.state["plan"].clear()
    server.state["requests"].clear()
    return f"http://127.0.0.1:{server.server_address[1]}/score"


def test_good_reply_sends_prompts_completions_and_columns(server, url):
    source = HttpReward(url, headers={"Authorization": "Bearer t"})
    assert source(["p1", "p2", "p3"], ["ab", "", "abcd"], answer=["x", "y", "z"]) == [2.0, None, 4.0]
    (request,) = server.state["requests"]
    assert request["body"] == {"prompts": ["p1", "p2", "p3"], "completions": ["ab", "", "abcd"], "answer": ["x", "y", "z"]}
    assert request["path"] == "/score" and request["auth"] == "Bearer t"


def test_a_500_is_retried_then_succeeds(server, url):
    server.state["plan"].extend([error_500])
    start = time.monotonic()
    assert HttpReward(url, retries=2, backoff=0.05)(["p"], ["abc"]) == [3.0]
    assert len(server.state["requests"]) == 2
    assert time.monotonic() - start < 2.0


def test_persistent_500_gives_up_after_the_retries(server, url):
    server.state["plan"].extend([error_500] * 5)
    with pytest.raises(RewardError, match=r"reward server http://127\.0\.0\.1:\d+/score: HTTP 500 .*overloaded.*3 attempts"):
        HttpReward(url, retries=2, backoff=0.01)(["p"], ["abc"])
    assert len(server.state["requests"]) == 3


def test_a_4xx_is_not_retried(server, url):
    server.state["plan"].extend([error_400])
    with pytest.raises(RewardError, match="replied HTTP 400 .*no prompts"):
        HttpReward(url, retries=3, backoff=0.01)(["p"], ["abc"])
    assert len(server.state["requests"]) == 1


@pytest.mark.parametrize("action, message", [
    (wrong_length, "returned 1 rewards for 2 samples"),
    (not_json, "replied with non-JSON: '<html>oops</html>'"),
    (no_rewards_key, 'reply has no "rewards" key'),
    (string_reward, "sample 1: got 'high'"),
])
def test_bad_replies_name_the_url_and_the_problem(server, url, action, message):
    server.state["plan"].append(action)
    with pytest.raises(RewardError) as info:
        HttpReward(url, retries=2, backoff=0.01)(["p1", "p2"], ["a", "b"])
    assert url in str(info.value) and message in str(info.value), str(info.value)
    assert len(server.state["requests"]) == 1  # a bad reply is not a transient failure


def test_timeout_is_retried_then_reported(server, url):
    server.state["plan"].extend([slow, slow])
    start = time.monotonic()
    with pytest.raises(RewardError, match=r"timed out after 0\.2 s \(2 attempts\)"):
        HttpReward(url, timeout=0.2, retries=1, backoff=0.01)(["p"], ["a"])
    assert time.monotonic() - start < 0.9  # two 0.2 s timeouts, not the server's 1 s sleep
    assert len(server.state["requests"]) == 2


def test_connection_refused_is_reported():
    with socket.socket() as probe:  # a port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RewardError, match=rf"reward server http://127\.0\.0\.1:{port}/: connection failed.*2 attempts"):
        HttpReward(f"http://127.0.0.1:{port}/", retries=1, backoff=0.01)(["p"], ["a"])


def test_resolved_http_spec_is_checked_and_named_by_its_url(server, url):
    reward = resolve_reward(url)
    assert reward(["p", "q"], ["aa", "b"]) == [2.0, 1.0]
    server.state["plan"].append(wrong_length)
    with pytest.raises(RewardError, match=f"^reward server {url} returned 1 rewards for 2 samples") as info:
        reward(["p", "q"], ["aa", "b"])
    assert str(info.value).count(url) == 1  # checked_call passes the server's own error through, not wrapped
