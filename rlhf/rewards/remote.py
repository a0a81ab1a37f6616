"""A reward server over HTTP (standard library only).

    source = HttpReward("http://127.0.0.1:8000/score")
    source(["What is 2+2?"], ["4."], answer=["4"])

Each call POSTs one JSON object

    {"prompts": [...], "completions": [...], "answer": [...], ...}    (extra columns as keys)

and expects the reply `{"rewards": [float | null, ...]}`, one entry per sample. A null skips the
sample (the rule of `rewards.base`); NaN, Infinity, a string or a bool is an error naming the
sample index, as for any reward source.

Transient failures are retried: a connection error (refused, or closed without a reply), a
timeout (no reply for `timeout` seconds), or a 5xx reply, up to `retries` more times, sleeping
`backoff * 2**attempt` seconds between attempts. A retry re-sends the whole batch and only the
reply that succeeds is used, so each sample counts once however many attempts it took (the
server may see a batch more than once: scoring should have no side effects). The retries are
counted (`retries_used`, and `take_retries()` for the count since the last read); the online
recipes log them per step as `reward/retries`. A server that is still failing after its retries
stops the run with a RewardError naming the URL, the last failure and the number of attempts;
the run's checkpoints are untouched, so `resume=true` continues once it is back.

What is not retried, since re-sending cannot fix it: a 4xx reply, and a reply that is not
`{"rewards": [...]}` with one entry per sample (non-JSON, a JSON error body such as
`{"error": "model not loaded"}`, the wrong length). Every failure is a RewardError naming the URL
and what was wrong.
"""

from __future__ import annotations

import http.client
import json
import math
import numbers
import socket
import time
import urllib.error
import urllib.request

from .base import RewardError

_RESERVED = ("prompts", "completions")


def _snippet(data: bytes | str, limit: int = 200) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _error_text(data: dict) -> str | None:
    """The message of a JSON error body ({"error": ...}, {"detail": ...}, {"message": ...}), or None."""
    for key in ("error", "detail", "message"):
        if data.get(key):
            value = data[key]
            if isinstance(value, dict):  # {"error": {"message": ..., "code": ...}}
                value = value.get("message", value)
            return value if isinstance(value, str) else json.dumps(value)
    return None


class HttpReward:
    """`(prompts, completions, **columns) -> list[float | None]` from a JSON reward server."""

    isolate_failures = False  # re-sending each sample alone would multiply timeouts and load

    def __init__(self, url: str, *, timeout: float = 30.0, retries: int = 2, backoff: float = 0.5,
                 headers: dict[str, str] | None = None):
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            raise RewardError(f"reward server URL must start with http:// or https://, got {url!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
        if not timeout or timeout <= 0 or backoff < 0:
            raise ValueError(f"timeout must be > 0 and backoff >= 0, got timeout={timeout!r}, backoff={backoff!r}")
        self.url, self.timeout, self.retries, self.backoff = url, float(timeout), retries, float(backoff)
        self.headers = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
        self.retries_used = 0  # attempts after the first, over every call (see take_retries)
        self._retries_read = 0

    @property
    def name(self) -> str:
        """What errors call this source (`source_name`): its URL, as for an http:// spec."""
        return self.url

    def take_retries(self) -> int:
        """Retries made since the last call of this method (the online recipes' `reward/retries`)."""
        count, self._retries_read = self.retries_used - self._retries_read, self.retries_used
        return count

    def __call__(self, prompts: list, completions: list, **columns) -> list[float | None]:
        for name in _RESERVED:
            if name in columns:
                raise RewardError(f"reward server {self.url}: a dataset column may not be named {name!r}")
        payload = {"prompts": list(prompts), "completions": list(completions),
                   **{name: list(values) for name, values in columns.items()}}
        try:
            body = json.dumps(payload, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as error:
            raise RewardError(f"reward server {self.url}: the request is not JSON-serialisable: {error}") from error
        reply = self._post(body)
        return self._parse(reply, len(prompts))

    def _post(self, body: bytes) -> bytes:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.retries_used += 1
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as error:
                detail = _snippet(error.read() or b"")
                last = f"HTTP {error.code} {error.reason}: {detail}"
                if error.code < 500:
                    raise RewardError(f"reward server {self.url} replied {last}") from error
                cause = error
            except (TimeoutError, socket.timeout) as error:
                last, cause = f"timed out after {self.timeout:g} s", error
            except urllib.error.URLError as error:
                reason = error.reason
                timed_out = isinstance(reason, (TimeoutError, socket.timeout))
                last, cause = (f"timed out after {self.timeout:g} s" if timed_out else f"connection failed: {reason}"), error
            except (OSError, http.client.HTTPException) as error:  # reset mid-read, a malformed reply
                last, cause = f"connection failed: {type(error).__name__}: {error}", error
        attempts = self.retries + 1
        raise RewardError(
            f"reward server {self.url}: {last} ({attempts} attempt{'s' if attempts > 1 else ''})"
        ) from cause

    def _parse(self, reply: bytes, count: int) -> list[float | None]:
        try:
            data = json.loads(reply)
        except (UnicodeDecodeError, ValueError):
            raise RewardError(f"reward server {self.url} replied with non-JSON: {_snippet(reply)}") from None
        if isinstance(data, dict) and "rewards" not in data and _error_text(data) is not None:
            # a server that failed but said 200 (or a proxy's error page in JSON): show its words
            raise RewardError(f"reward server {self.url} replied with an error instead of rewards: "
                              f"{_snippet(_error_text(data))}")
        if not isinstance(data, dict) or "rewards" not in data:
            raise RewardError(
                f"reward server {self.url}: reply has no \"rewards\" key (expected {{\"rewards\": [...]}}), "
                f"got {_snippet(json.dumps(data))}"
            )
        rewards = data["rewards"]
        if not isinstance(rewards, list):
            raise RewardError(f"reward server {self.url}: \"rewards\" is a {type(rewards).__name__}, not a list")
        if len(rewards) != count:
            raise RewardError(f"reward server {self.url} returned {len(rewards)} rewards for {count} samples")
        out: list[float | None] = []
        for index, value in enumerate(rewards):
            if value is None:
                out.append(None)
            elif isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise RewardError(f"reward server {self.url}, sample {index}: got {value!r:.80}; expected a finite "
                                  "number or null")
            else:
                out.append(float(value))
        return out

    def __repr__(self) -> str:
        return f"HttpReward({self.url!r})"
