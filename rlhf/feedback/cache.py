"""A persistent, kill-safe cache of judge answers: an append-only JSONL file.

One line per judged item, {"k": key, "v": value, "m": verdict mass}, where

    key = sha256(json([judge.fingerprint, kind, call, prompt, *texts]))

so an answer is reused only by the same judge weights, template and verdict settings on the same
texts. Lines are appended and flushed (fsync) after every judge batch: a run killed mid-way loses
at most the batch in flight, and a torn last line (killed mid-write) is cut off when the file is
opened again. A rerun of the same work answers everything from the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


class JudgeCache:
    """key -> (value, mass) judge answers, loaded from `path` on open and appended to by `flush`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, tuple[float | None, float | None]] = {}
        self._pending: list[str] = []
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line: cut it, so the next append starts a fresh line
            logger.warning("judge cache %s: ignoring a torn last line (%d bytes)", self.path, len(data) - end)
            with open(self.path, "r+b") as f:
                f.truncate(end)
            data = data[:end]
        bad = 0
        for line in data.decode("utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self._entries[entry["k"]] = (entry["v"], entry.get("m"))
            except (json.JSONDecodeError, KeyError, TypeError):
                bad += 1
        if bad:
            logger.warning("judge cache %s: ignored %d unreadable lines", self.path, bad)

    @staticmethod
    def key(fingerprint: str, kind: str, call: str, *item) -> str:
        """The cache key of one judge item (prompt, *texts) asked with `call` ("first_wins" / "scores")."""
        text = json.dumps([fingerprint, kind, call, *item], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def get(self, key: str) -> tuple[float | None, float | None] | None:
        """(value, mass) for `key`, or None if it was never stored (counted in hits / misses)."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, key: str, value: float | None, mass: float | None = None) -> None:
        """Store an answer (written to the file by the next `flush`)."""
        self._entries[key] = (value, mass)
        self._pending.append(json.dumps({"k": key, "v": value, "m": mass}))

    def flush(self) -> None:
        """Append the answers stored since the last flush, and fsync them."""
        if not self._pending:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in self._pending))
            f.flush()
            os.fsync(f.fileno())
        self._pending = []

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"JudgeCache({str(self.path)!r}, {len(self)} entries, hits={self.hits}, misses={self.misses})"
