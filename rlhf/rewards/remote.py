"""A reward server over HTTP (standard library only).

    source = HttpReward("http://127.0.0.1:8000/score")
    source(["What is 2+2?"], ["4."], answer=["4"])

Each call POSTs one JSON object

    {"prompts": [...], "completions": [...], "answer": [...], ...}    (extra columns as keys)

and expects the reply `{"rewards": [float | null, ...]}`, one entry per sample (null skips a
sample). Connection errors, timeouts and 5xx replies are retried `retries` times, sleeping
`backoff * 2**attempt` seconds between attempts; a 4xx is not retried. Every failure is a
RewardError naming the URL and what was wrong.
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
