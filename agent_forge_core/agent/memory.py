"""Persistent memory in SQLite (stdlib): a key-value store and an episode log, per agent and per session.

`Memory(path, agent, session)` sees only its own (agent, session) rows, so two sessions never read each
other's keys; a new `Memory` on the same file (another context, another process, after a restart) sees
everything its session wrote before. Keys and values are single lines (they go into one-line answers).
Tool argument forms: `mem_write` takes `key=value`, `mem_read` takes `key`.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

MAX_KEY, MAX_VALUE = 100, 400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (agent TEXT, session TEXT, key TEXT, value TEXT, updated REAL,
                               PRIMARY KEY (agent, session, key));
CREATE TABLE IF NOT EXISTS episodes (agent TEXT, session TEXT, episode TEXT, role TEXT, text TEXT, at REAL);
"""


class Memory:
    def __init__(self, path: str | Path, agent: str = "agent", session: str = "default"):
        self.path, self.agent, self.session = Path(path), agent, session
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._db() as db:
            db.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def write(self, key: str, value: str) -> None:
        key, value = " ".join(key.split())[:MAX_KEY], " ".join(str(value).split())[:MAX_VALUE]
        if not key:
            raise ValueError("an empty key")
        with self._lock, self._db() as db:
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?)", (self.agent, self.session, key, value, time.time()))

    def read(self, key: str) -> str | None:
        with self._lock, self._db() as db:
            row = db.execute("SELECT value FROM kv WHERE agent=? AND session=? AND key=?",
                             (self.agent, self.session, " ".join(key.split()))).fetchone()
        return row[0] if row else None

    def items(self) -> dict[str, str]:
        with self._lock, self._db() as db:
            rows = db.execute("SELECT key, value FROM kv WHERE agent=? AND session=? ORDER BY updated",
                              (self.agent, self.session)).fetchall()
        return dict(rows)

    def clear(self) -> None:
        with self._lock, self._db() as db:
            db.execute("DELETE FROM kv WHERE agent=? AND session=?", (self.agent, self.session))

    def log(self, episode: str, role: str, text: str) -> None:
        with self._lock, self._db() as db:
            db.execute("INSERT INTO episodes VALUES (?, ?, ?, ?, ?, ?)",
                       (self.agent, self.session, episode, role, text, time.time()))

    def episode(self, episode: str) -> list[tuple[str, str]]:
        with self._lock, self._db() as db:
            return db.execute("SELECT role, text FROM episodes WHERE agent=? AND session=? AND episode=? ORDER BY rowid",
                              (self.agent, self.session, episode)).fetchall()

    # tool forms ------------------------------------------------------------------------------------------
    def tool_write(self, args: str) -> str:
        if "=" not in args:
            return "error: write key=value"
        key, value = args.split("=", 1)
        try:
            self.write(key.strip(), value.strip())
        except ValueError as e:
            return f"error: {e}"
        return "stored"

    def tool_read(self, args: str) -> str:
        value = self.read(args.strip())
        return value if value is not None else "not found"
