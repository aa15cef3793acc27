"""Content-addressed LLM response cache and call log in one SQLite file (e.g. <run dir>/llm.db).

Tables:
  requests(key → canonical request JSON)   each distinct request once (content-addressed)
  calls(id, purpose, key, occurrence, answer, tokens, latency, attempts, cached, error, meta …)   every call
  answers((key, occurrence) → calls.id)    which logged call answers the k-th occurrence of a request

The k-th time a request key is seen by one cache session maps to the k-th recorded answer, so an identical
retry gets a fresh answer live, and a replay reproduces the exact sequence (failures included). Replay may read
answers from another run's file while logging into this run's file. No credential is ever written here.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from uhnas.llm.errors import LLMError

__all__ = ["AnswerSource", "CacheMode", "CallLog", "CallRecord", "ResponseCache", "StoredAnswer", "request_key"]

CacheMode = Literal["readwrite", "replay", "off"]
CACHE_MODES: tuple[str, ...] = ("readwrite", "replay", "off")
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL,
    ts REAL NOT NULL,
    purpose TEXT NOT NULL,
    model TEXT NOT NULL,
    key TEXT NOT NULL,
    occurrence INTEGER NOT NULL,
    source TEXT NOT NULL,
    mode TEXT NOT NULL,
    text TEXT,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    latency_s REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    cached INTEGER NOT NULL DEFAULT 0,
    http_status INTEGER,
    error TEXT,
    error_type TEXT,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS calls_purpose ON calls (purpose);
CREATE TABLE IF NOT EXISTS answers (
    key TEXT NOT NULL,
    occurrence INTEGER NOT NULL,
    call_id INTEGER NOT NULL REFERENCES calls (id),
    PRIMARY KEY (key, occurrence)
);
"""

_ANSWER_SQL = """
SELECT c.id, c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason, c.mode, c.error, c.error_type,
       c.http_status
FROM answers a JOIN calls c ON c.id = a.call_id WHERE a.key = ? AND a.occurrence = ?
"""


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace, NaN rejected) used for hashing and storage."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _meta_json(meta: dict[str, Any]) -> str:
    """JSON of annotation fields (NaN/inf allowed: metrics can be undefined)."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(request: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of a request (model, messages, sampling params, schema, format mode)."""
    return hashlib.sha256(canonical_json(request).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StoredAnswer:
    """The recorded outcome of one (key, occurrence): an answer, or the error the original call ended with."""

    call_id: int
    text: str | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    mode: str
    error: str | None
    error_type: str | None
    http_status: int | None


@dataclass
class CallRecord:
    """Everything logged about one call (the API key is not a field: it cannot be logged)."""

    purpose: str
    model: str
    key: str
    occurrence: int
    request: dict[str, Any]
    source: str  # "live" | "cache" | "replay"
    mode: str  # response format actually used: "json_schema" | "json_object" | "text"
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 0
    cached: bool = False
    http_status: int | None = None
    error: str | None = None
    error_type: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    """Open a SQLite connection usable from several threads (callers serialise with a lock)."""
    if read_only:
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=10)
    else:
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _row_to_answer(row: tuple[Any, ...] | None) -> StoredAnswer | None:
    """StoredAnswer from an _ANSWER_SQL row."""
    return None if row is None else StoredAnswer(*row)


class AnswerSource:
    """Read-only view of another run's llm.db, to replay its answers."""

    def __init__(self, path: str | Path) -> None:
        """Open `path` read-only; raise LLMError when it is missing or not an LLM log."""
        self.path = Path(path)
        if not self.path.is_file():
            raise LLMError(f"replay source {self.path} does not exist")
        self._conn = _connect(self.path, read_only=True)
        self._lock = threading.Lock()
        try:
            self._conn.execute("SELECT 1 FROM answers LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise LLMError(f"replay source {self.path} is not a uhnas LLM log ({exc})") from None

    def answer(self, key: str, occurrence: int) -> StoredAnswer | None:
        """The recorded outcome for (key, occurrence), if any."""
        with self._lock:
            return _row_to_answer(self._conn.execute(_ANSWER_SQL, (key, occurrence)).fetchone())

    def count(self) -> int:
        """How many recorded outcomes the file holds."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


class CallLog:
    """The run's call log (and answer index) in a SQLite file; one writing process, thread-safe within it."""

    def __init__(self, path: str | Path) -> None:
        """Open or create the log at `path` in WAL mode."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = _connect(self.path, read_only=False)
        self._lock = threading.Lock()
        self._closed = False
        with self._lock, self._conn:
            self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def record(self, rec: CallRecord, *, session: str, link: Literal["replace", "keep"] | None = None) -> int:
        """Append one call (and its request body, once per key), optionally indexing it as the answer of its
        (key, occurrence) — replacing or keeping an existing link — in the same transaction; return its id."""
        row = (
            session, time.time(), rec.purpose, rec.model, rec.key, rec.occurrence, rec.source, rec.mode, rec.text,
            rec.finish_reason, rec.prompt_tokens, rec.completion_tokens, rec.latency_s, rec.attempts,
            int(rec.cached), rec.http_status, rec.error, rec.error_type, _meta_json(rec.meta),
        )  # fmt: skip
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR IGNORE INTO requests (key, body) VALUES (?, ?)", (rec.key, canonical_json(rec.request))
            )
            cur = self._conn.execute(
                "INSERT INTO calls (session, ts, purpose, model, key, occurrence, source, mode, text, finish_reason,"
                " prompt_tokens, completion_tokens, latency_s, attempts, cached, http_status, error, error_type, meta)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            call_id = int(cur.lastrowid or 0)
            if link is not None:
                self._link(rec.key, rec.occurrence, call_id, replace=link == "replace")
            return call_id

    def answer(self, key: str, occurrence: int) -> StoredAnswer | None:
        """The recorded outcome for (key, occurrence) in this file, if any."""
        with self._lock:
            return _row_to_answer(self._conn.execute(_ANSWER_SQL, (key, occurrence)).fetchone())

    def _link(self, key: str, occurrence: int, call_id: int, *, replace: bool) -> None:
        """Make call `call_id` the answer of (key, occurrence), keeping an existing link unless `replace`.

        The caller holds the lock and the transaction."""
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        sql = f"{verb} INTO answers (key, occurrence, call_id) VALUES (?, ?, ?)"
        self._conn.execute(sql, (key, occurrence, call_id))

    def annotate(self, call_id: int, **fields: Any) -> None:
        """Merge JSON-serialisable `fields` into the meta of call `call_id` (e.g. candidate id, validity)."""
        with self._lock, self._conn:
            row = self._conn.execute("SELECT meta FROM calls WHERE id = ?", (call_id,)).fetchone()
            if row is None:
                raise LLMError(f"no call #{call_id} in {self.path}")
            meta = json.loads(row[0])
            meta.update(fields)
            self._conn.execute("UPDATE calls SET meta = ? WHERE id = ?", (_meta_json(meta), call_id))

    def call(self, call_id: int) -> dict[str, Any]:
        """One logged call as a dict, with its request (messages and parameters) and parsed meta."""
        rows = self._select("WHERE c.id = ?", (call_id,))
        if not rows:
            raise LLMError(f"no call #{call_id} in {self.path}")
        return rows[0]

    def calls(self, purpose: str | None = None) -> list[dict[str, Any]]:
        """All logged calls in order (optionally of one purpose), with requests and parsed meta."""
        if purpose is None:
            return self._select("", ())
        return self._select("WHERE c.purpose = ?", (purpose,))

    def _select(self, where: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        """Rows of calls joined with their request bodies, as dicts."""
        sql = f"SELECT c.*, r.body AS request FROM calls c LEFT JOIN requests r ON r.key = c.key {where} ORDER BY c.id"
        with self._lock:
            cur = self._conn.execute(sql, args)
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        out = []
        for row in rows:
            item = dict(zip(names, row))
            item["meta"] = json.loads(item["meta"])
            item["request"] = json.loads(item["request"]) if item["request"] else None
            item["cached"] = bool(item["cached"])
            out.append(item)
        return out

    def tallies(self) -> list[tuple[str, bool, int, int, int, int]]:
        """(purpose, cached, calls, failed, prompt_tokens, completion_tokens) per purpose and cached flag."""
        sql = (
            "SELECT purpose, cached, COUNT(*), SUM(error IS NOT NULL), SUM(prompt_tokens), SUM(completion_tokens)"
            " FROM calls GROUP BY purpose, cached ORDER BY purpose, cached"
        )
        with self._lock:
            rows = self._conn.execute(sql).fetchall()
        return [(p, bool(c), int(n), int(f or 0), int(pt or 0), int(ct or 0)) for p, c, n, f, pt, ct in rows]

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._conn.close()


class ResponseCache:
    """Where answers come from (cache mode, optional other run's file) and where calls are logged."""

    def __init__(self, path: str | Path, *, mode: CacheMode = "readwrite", source: str | Path | None = None) -> None:
        """Log into `path`; read answers from it, or from `source` (another run's llm.db) when given."""
        if mode not in CACHE_MODES:
            raise LLMError(f"unknown LLM cache mode '{mode}' (expected one of {', '.join(CACHE_MODES)})")
        self.mode: CacheMode = mode
        same = source is None or Path(source).resolve() == Path(path).resolve()
        self._source: AnswerSource | None = None if same else AnswerSource(source)  # type: ignore[arg-type]
        self.log = CallLog(path)
        self.session = uuid.uuid4().hex
        self._occurrences: dict[str, int] = {}
        self._served: set[tuple[str, int]] = set()  # (key, occurrence) answered from the replay source
        self._lock = threading.Lock()

    @property
    def network_allowed(self) -> bool:
        """False in replay mode: every answer must come from the recorded log."""
        return self.mode != "replay"

    def next_occurrence(self, key: str) -> int:
        """0 the first time this session sees `key`, then 1, 2, …"""
        with self._lock:
            k = self._occurrences.get(key, 0)
            self._occurrences[key] = k + 1
            return k

    def lookup(self, key: str, occurrence: int) -> tuple[StoredAnswer, bool] | None:
        """The recorded outcome and whether it came from the other run's file; None on a miss or mode off."""
        if self.mode == "off":
            return None
        if self._source is not None:
            found = self._source.answer(key, occurrence)
            if found is not None:
                with self._lock:
                    self._served.add((key, occurrence))
                return found, True
            if self.mode == "replay":
                return None
        found = self.log.answer(key, occurrence)
        return None if found is None else (found, False)

    def replay_progress(self) -> tuple[int, int] | None:
        """(recorded outcomes served so far, outcomes the replay source holds); None without a source."""
        if self._source is None:
            return None
        with self._lock:
            served = len(self._served)
        return served, self._source.count()

    def record(self, rec: CallRecord, *, answers: bool) -> int:
        """Log a call; when `answers`, index it as the answer of its (key, occurrence) for later hits/replays."""
        link: Literal["replace", "keep"] | None = None
        if answers and self.mode != "off":
            link = "replace" if rec.source == "live" else "keep"
        return self.log.record(rec, session=self.session, link=link)

    def close(self) -> None:
        """Close the log and the replay source."""
        self.log.close()
        if self._source is not None:
            self._source.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
