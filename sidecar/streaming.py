"""SSE relay: upstream bytes go to the app as they arrive, parsed only on the side.

The scanner never re-serialises a chunk. It splits what arrived into complete
lines (holding back at most one partial line), looks at ``data:`` payloads to
find the first content token, the usage and the end, and stops forwarding at
``data: [DONE]`` so the sidecar can put its ``routing`` chunk before it.

Before the first content token (text, reasoning, a tool or function call, a
refusal: any delta that is part of the answer) nothing is sent to the app (the
few bytes of a role-only chunk are held), so a provider that accepts the request and then
stalls or breaks can still be replaced by the next one without the app ever
noticing. From the first token on, bytes flow straight through.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from router_common.domain import ErrorClass
from sidecar.defaults import MAX_UPSTREAM_RESPONSE_BYTES
from sidecar.idle_timeout import IdleTimeout
from sidecar.redaction import KeyRedactor
from sidecar.transport import UpstreamResponse
from sidecar.upstream import (
    AttemptRecord,
    break_text,
    classify_exception,
    usage_count,
    usage_object,
)

#: What ``_inspect`` found in a chunk.
_PLAIN, _FINISH, _USAGE, _EMPTY, _ERROR = range(5)

_DATA = b"data:"
_DONE = b"[DONE]"
_CONTENT = b'"content":"'
_EMPTY_CONTENT = b'"content":""'
#: Deltas that are answer tokens without ``content``: a tool call, a refusal
#: (structured outputs) and a call of the older ``functions`` API. Before the first
#: token a chunk holding one is parsed (an empty or null one is no token).
_OTHER_TOKENS = (b'"tool_calls"', b'"refusal"', b'"function_call"')
_MODEL_KEY = b'"model"'
_COMPACT_MODEL = b'"model":"'
#: A ``"model": "..."`` member, any spacing. Quotes inside JSON strings are
#: escaped, so a ``"model"`` not preceded by a backslash can only be a key (that
#: is checked on each match: a look-behind here would cost ``re`` its fast
#: literal-prefix search, and the pattern runs on whole blocks).
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')


def _plain_deltas(block: bytes) -> bool:
    """Every line of ``block`` is an ordinary delta or a blank line: no finish, usage,
    error, tool call, [DONE] or line of another kind, so after the first token there
    is nothing to read in it but the count of content chunks. Anything unusual (other
    spacing, an ``event:`` or ``id:`` line, a data line split over two) fails a check
    and takes the line-by-line path, which is exact.

    Each plain event is one data line with ``"finish_reason":null`` and a blank line:
    two newlines per such chunk (the block may start with the blank line of the event
    before, or end before its own). Counting newlines instead of ``data:`` costs the
    same one scan and also catches lines that are not data (the relay drops those).
    """
    newlines = block.count(b"\n") - block.startswith(b"\n") + (not block.endswith(b"\n\n"))
    return (
        newlines == 2 * block.count(b'"finish_reason":null')
        and block.startswith((_DATA, b"\ndata:"))
        and b'"error"' not in block
        and b'"tool_calls"' not in block
        and block.count(b'"usage"') == block.count(b'"usage":null')
    )


#: Where a run of plain delta lines most likely ends (compact JSON spellings of a
#: finish, a usage object, the end). Only a guess: the run is verified by
#: ``_plain_deltas`` before it is taken in bulk.
_RUN_ENDS = (b'"finish_reason":"', b'"usage":{', _DONE)


def _plain_run(block: bytes, pos: int, end: int) -> int:
    """End of the run of ordinary delta lines of ``block`` that starts at ``pos``.

    ``pos`` itself when there is none. A response that arrives in one read
    (an unpaced or fast provider) is mostly such lines between its first
    token and its finish; taking them as one slice saves the line-by-line
    loop about a microsecond and a half per chunk.
    """
    # First guess, from the end: a whole answer's one finish is on its last lines, so
    # searching backwards finds it in a few hundred bytes, where each forward search
    # for a marker reads the whole run (three of them cost more than the check).
    at = block.rfind(_RUN_ENDS[0], pos, end)
    if at >= 0:
        stop = block.rfind(b"\n", pos, at) + 1
        if stop > pos and _plain_deltas(block[pos:stop]):
            return stop
    stop = end
    for marker in _RUN_ENDS:
        at = block.find(marker, pos, stop)
        if at >= 0:
            stop = at
    if stop < end:
        stop = block.rfind(b"\n", pos, stop) + 1  # the start of the marker's line
    if stop <= pos or not _plain_deltas(block[pos:stop]):
        return pos
    return stop


def _unify_newlines(data: bytes) -> bytes:
    """CRLF and lone CR as LF (the three line ends the SSE spec allows)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


#: A UTF-8 byte order mark, which the SSE spec strips from the start of a stream.
_BOM = b"\xef\xbb\xbf"

#: ``"model":"id"`` bytes as upstreams write them → the id (every stream of an
#: upstream model repeats the same bytes: decoded once).
_FIELD_MODELS: dict[bytes, str] = {}


class SSEScanner:
    """Incremental SSE line scanner: what the measurements need, and what the app may see.

    What it hands on (``feed``'s return value) is what an OpenAI client
    expects whatever the upstream did: ``model`` is the id the app asked for
    (the upstream's is kept in ``upstream_model``); a chunk without choices
    is never forwarded (the usage chunk is held for ``final_chunks``, which
    releases it only when the app asked for ``include_usage``); the last chunk
    with a ``finish_reason`` is held too, so the ``routing`` object can ride on
    it; error events are not forwarded (the sidecar sends its own, redacted);
    and every forwarded block passes through the key redactor.
    """

    __slots__ = (
        "_chunks_at_first_read",
        "_counted",
        "_finish_obj",
        "_held_finish",
        "_held_usage",
        "_long",
        "_long_size",
        "_max_line",
        "_model",
        "_model_field",
        "_model_json",
        "_parsed",
        "_redact",
        "_swapped",
        "_tail",
        "_uncounted",
        "_usage_obj",
        "cr_lines",
        "done",
        "error",
        "finish_seen",
        "first_token_at",
        "last_id",
        "line_too_long",
        "upstream_model",
        "usage_prompt_tokens",
        "usage_tokens",
        "want_usage",
    )

    def __init__(
        self,
        model: str | None = None,
        want_usage: bool = True,
        redactor: KeyRedactor | None = None,
        max_line_bytes: int = MAX_UPSTREAM_RESPONSE_BYTES,
    ) -> None:
        self._tail = b""
        #: The reads of one line that has not ended within a read (joined once when
        #: it ends: appending read by read would copy the line again on every read).
        self._long: list[bytes] | None = None
        self._long_size = 0
        #: Longest line accepted; a provider that sends more without a newline is
        #: a broken stream, not something to buffer without bound.
        self._max_line = max_line_bytes
        #: The stream failed because a line exceeded ``_max_line`` (``error`` says so).
        self.line_too_long = False
        #: The upstream ends lines with CR alone: every read is translated to LF first.
        self.cr_lines = False
        self.first_token_at: float | None = None
        self.usage_tokens: int | None = None
        self.usage_prompt_tokens: int | None = None
        self._counted = 0
        #: A run of plain deltas not counted yet (see ``_count_later``).
        self._uncounted: bytes | None = None
        #: ``content_chunks`` when the read that held the first token was scanned
        #: (-1: that read ended the stream).
        self._chunks_at_first_read: int | None = None
        self.done = False
        self.finish_seen = False
        self.error: Any = None
        self.last_id: str | None = None
        #: The model id the upstream put in its chunks (shown in ``routing``).
        self.upstream_model: str | None = None
        self.want_usage = want_usage
        self._model = model
        self._model_json = orjson.dumps(model) if model is not None else None
        #: The upstream's ``"model":"..."`` bytes as last seen, replaced by bytes.replace.
        self._model_field: bytes | None = None
        #: What replaces it: ``"model":`` and the app's id (made once per stream).
        self._swapped = b'"model":' + self._model_json if self._model_json is not None else b""
        self._redact = redactor
        self._held_finish: bytes | None = None
        self._held_usage: bytes | None = None
        #: The held chunks as ``_inspect`` parsed them, so the end of the stream
        #: (cost, ``routing``) is built without parsing them a second time.
        self._finish_obj: dict[str, Any] | None = None
        self._usage_obj: dict[str, Any] | None = None
        #: The payload ``_inspect`` parsed last (None when it took a fast path).
        self._parsed: dict[str, Any] | None = None

    def feed(self, data: bytes, now: float) -> bytes:
        """Take upstream bytes; return those to forward now (complete lines before [DONE])."""
        if self.done or self.error is not None:
            return b""
        if self.cr_lines:
            data = _unify_newlines(data)
        if self._long is not None:  # a line longer than one read is being assembled
            if b"\n" not in data and b"\r" not in data:
                self._long.append(data)
                self._long_size += len(data)
                self._check_line(self._long_size)
                return b""
            self._long.append(data)
            buf = b"".join(self._long)
            self._long = None
        else:
            buf = self._tail + data if self._tail else data
        cut = buf.rfind(b"\n")
        if cut < 0 and not self.cr_lines and buf.find(b"\r", 0, len(buf) - 1) >= 0:
            # A CR not followed by LF: the upstream ends its lines with CR alone (the
            # SSE spec allows it). Only such a stream pays for the translation.
            self.cr_lines = True
            buf = _unify_newlines(buf)
            cut = buf.rfind(b"\n")
        if cut < 0:
            self._tail = b""
            self._long = [buf]
            self._long_size = len(buf)
            self._check_line(len(buf))
            return b""
        if cut + 1 < len(buf) and len(buf) - cut - 1 > self._max_line:
            self._check_line(len(buf) - cut - 1)
            return b""
        complete = buf[: cut + 1]
        self._tail = buf[cut + 1 :]
        if (
            self.first_token_at is not None
            and self._held_finish is None
            and _plain_deltas(complete)
        ):
            # The bulk of a stream, counted without splitting it into lines.
            self._count_later(complete)
            return self._outgoing(complete)
        out: list[bytes] = []
        pos = 0
        end = len(complete)
        skip_blank = False  # the blank line that ended an event held or dropped here
        run_tried = False
        while pos < end:
            nl = complete.find(b"\n", pos)
            line = complete[pos : nl + 1]
            pos = nl + 1
            if not line.startswith(_DATA):
                if line.startswith(b":") or not line.strip():  # a comment, or a blank line
                    if not (skip_blank and line.strip() == b""):
                        out.append(line)
                    skip_blank = False
                else:  # event:, id:, retry: or junk: an OpenAI client would choke on it
                    skip_blank = True
                continue
            skip_blank = True
            payload = line[5:].strip()
            if complete.startswith(_DATA, pos):
                # One event in several data lines (the SSE spec joins them with "\n"):
                # inspected and forwarded as one line, which every client reads alike.
                parts = [payload]
                while complete.startswith(_DATA, pos):
                    nl = complete.find(b"\n", pos)
                    parts.append(complete[pos + 5 : nl + 1].strip())
                    pos = nl + 1
                payload = b"\n".join(parts)
                line = b"data: " + payload.replace(b"\n", b" ") + b"\n"
            if payload == _DONE:
                self.done = True
                self._tail = b""
                break
            if not payload:
                out.append(line)
                skip_blank = False
                continue
            kind = self._inspect(payload, now)
            if kind == _ERROR:
                break
            if kind == _EMPTY and pos >= end and len(line) + len(self._tail) <= self._max_line:
                # Not JSON and its event not ended in this read: the rest of its data
                # lines may come in the next one, so it is held to be joined with them.
                self._tail = line + self._tail
                break
            if kind == _USAGE:
                self._held_usage = payload
                self._usage_obj = self._parsed
            elif kind == _FINISH:
                if self._held_finish is not None:
                    out.append(b"data: " + self._held_finish + b"\n\n")
                self._held_finish = payload
                self._finish_obj = self._parsed
            elif kind == _PLAIN:
                if self._held_finish is not None:
                    out.append(b"data: " + self._held_finish + b"\n\n")
                    self._held_finish = self._finish_obj = None
                out.append(line)
                skip_blank = False
                if not run_tried and self.first_token_at is not None:
                    run_tried = True  # once per block: a failed check would fail again
                    stop = _plain_run(complete, pos, end)
                    if stop > pos:
                        run = complete[pos:stop]
                        self._count_later(run)
                        out.append(run)
                        pos = stop
            # _EMPTY: a chunk without choices and without usage, or not JSON, is dropped
        return self._outgoing(b"".join(out))

    def _check_line(self, size: int) -> None:
        """A line past ``_max_line`` bytes ends the stream as failed (nothing more is held)."""
        if size > self._max_line:
            self.line_too_long = True
            self.error = {"message": self.failure_text()}
            self._long = None
            self._tail = b""

    @property
    def max_line_bytes(self) -> int:
        """The longest line held, and the most held before the first token."""
        return self._max_line

    def failure_text(self, mid_stream: bool = False) -> str:
        """Why the upstream stream failed: its error event, or a line too long to hold."""
        if self.line_too_long:
            return f"upstream sent an SSE line longer than {self._max_line} bytes"
        return f"upstream error event{' mid-stream' if mid_stream else ''}: {self.error_text()}"

    def _outgoing(self, block: bytes) -> bytes:
        """The app's model id in place of the upstream's, and no key."""
        block = self._rewrite_model(block)
        if self._redact is not None:
            block = self._redact.scrub(block)
        return block

    def _rewrite_model(self, block: bytes) -> bytes:
        """Every ``"model": "<upstream id>"`` member of ``block`` names the app's model.

        The upstream writes the same member in every chunk, so once it has been
        seen a count and a ``bytes.replace`` do (C speed; the replacements are
        counted by the length they added, so the block is read twice, not three
        times); the regular expression only runs when a block holds a spelling not
        seen yet.
        """
        if self._model_json is None:
            return block
        keys = block.count(_MODEL_KEY)
        if not keys:
            return block
        field = self._model_field
        if field is None:
            field = self._learn_compact_field(block)
        if field is not None:
            swapped = self._swapped
            grow = len(swapped) - len(field)
            if grow:  # the replacements are counted by the length they added: no count
                out = block.replace(field, swapped)
                if len(out) - len(block) == keys * grow:
                    return out
            elif keys == block.count(field):
                return block.replace(field, swapped)
        return _MODEL_FIELD.sub(self._swap_model, block)

    def _learn_compact_field(self, block: bytes) -> bytes | None:
        """The upstream's ``"model":"id"`` bytes, when it writes compact JSON (most do)."""
        at = block.find(_COMPACT_MODEL)
        if at < 0 or (at > 0 and block[at - 1] == 0x5C):  # 0x5C: a backslash
            return None
        end = block.find(b'"', at + len(_COMPACT_MODEL))
        if end < 0 or 0x5C in block[at:end]:
            return None
        field = block[at : end + 1]
        self._note_field(field)
        return field

    def _note_field(self, field: bytes) -> None:
        self._model_field = field
        if self.upstream_model is None:
            known = _FIELD_MODELS.get(field)
            if known is not None:
                self.upstream_model = known
                return
            with contextlib.suppress(ValueError):
                value = orjson.loads(field[field.index(b":") + 1 :])
                if isinstance(value, str):
                    self.upstream_model = value
                    if len(_FIELD_MODELS) < 1024:  # upstreams' model ids: a few; bounded
                        _FIELD_MODELS[field] = value

    def _swap_model(self, match: re.Match[bytes]) -> bytes:
        field = match.group(0)
        start = match.start()
        if start > 0 and match.string[start - 1] == 0x5C:  # inside a string: leave it
            return field
        self._note_field(field)
        return b'"model":' + (self._model_json or b"null")

    def error_text(self) -> str:
        """The upstream error event's message, short and without keys.

        An ``error`` that is not ``{"message": "<text>"}`` is written as JSON, the
        project's notation for values (``str()`` wrote a Python repr, whose
        ``\\'`` escapes the redactor does not know: a key holding both quote kinds
        got through)."""
        err = self.error
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            text = err["message"][:4096]
        else:
            text = orjson.dumps(err).decode()[:4096]
        if self._redact is not None:  # before cutting: a cut key could slip through in part
            text = self._redact.scrub_text(text)
        return text[:300]

    def flush(self, now: float) -> bytes:
        """At EOF: a last line without a newline is still a line."""
        if self._long is not None:
            self._tail, self._long = b"".join(self._long), None
        if not self._tail or self.done:
            return b""
        tail, self._tail = self._tail, b""
        out = self.feed(tail + b"\n", now)
        return out

    def supply_usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        """A usage chunk from the sidecar's counts when the app asked for one and the
        provider sent none.

        Why: an app that sets ``stream_options.include_usage`` reads usage (and
        ``usage.cost``) from the last chunk, as OpenAI's API promises it; a provider
        that ignores the option would otherwise leave it with none, and its
        ``routing`` on the finish chunk instead. The counts are the ones the cost
        was computed from (``routing.cost_usd.estimated`` says they are estimates).
        """
        if not self.want_usage or self._held_usage is not None:
            return
        chunk: dict[str, Any] = {
            "id": self.last_id or "",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self._model or self.upstream_model or "",
            "choices": [],
            "usage": usage_object(prompt_tokens, completion_tokens),
        }
        self._usage_obj = chunk
        self._held_usage = orjson.dumps(chunk)

    def set_usage_cost(self, cost_usd: float) -> None:
        """Put ``cost`` (USD, OpenRouter's field) in the held usage chunk the app will get."""
        if not self.want_usage or self._held_usage is None:
            return
        chunk = self._usage_obj
        if chunk is not None and isinstance(chunk.get("usage"), dict):
            chunk["usage"]["cost"] = cost_usd
            self._held_usage = orjson.dumps(chunk)

    def final_chunks(self, routing: dict[str, Any] | None) -> bytes:
        """The held chunks, ``routing`` on the last one, as SSE lines (redacted).

        With ``include_usage`` the usage chunk is last; without it, the chunk with
        the ``finish_reason`` (a stream that had neither gets a chunk with an
        empty delta, so the app still receives its ``routing``).
        """
        chunks: list[bytes] = []
        last: dict[str, Any] | None = None  # the last chunk, parsed (held from _inspect)
        if self._held_finish is not None:
            chunks.append(self._rewrite_model(self._held_finish))
            last = self._finish_obj
        if self.want_usage and self._held_usage is not None:
            chunks.append(self._rewrite_model(self._held_usage))
            last = self._usage_obj
        self._held_finish = self._held_usage = self._finish_obj = self._usage_obj = None
        if routing is not None:
            if chunks and last is None:
                with contextlib.suppress(ValueError):
                    parsed = orjson.loads(chunks[-1])
                    if isinstance(parsed, dict):
                        last = parsed
            if last is None:
                last = {
                    "id": self.last_id or "",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "choices": [{"index": 0, "delta": {}, "finish_reason": None}],
                }
                chunks.append(b"")
            if self._model is not None:
                last["model"] = self._model
            last["routing"] = routing
            chunks[-1] = orjson.dumps(last)
        if not chunks:
            return b""
        out = b"".join(b"data: " + c + b"\n\n" for c in chunks)
        return self._redact.scrub(out) if self._redact is not None else out

    def _inspect(self, payload: bytes, now: float) -> int:
        """Measure one ``data:`` payload and say what kind of chunk it is."""
        if (
            b'"finish_reason":null' in payload
            and (b'"usage"' not in payload or b'"usage":null' in payload)
            and b'"error"' not in payload
        ):
            # Fast path for the bulk of a stream, the first token included (it is
            # on the app's TTFT path): a plain delta chunk is only counted, by
            # bytes. A bare ``"content":"`` can only be JSON structure (quotes in
            # strings are escaped), and an empty string is no token. With
            # include_usage (which the sidecar always asks for) OpenAI-style
            # providers put ``"usage":null`` on every chunk: that is no usage.
            at = payload.find(_CONTENT)
            if at >= 0 and payload[at + 11 : at + 12] != b'"':
                self._token(now)
                return _PLAIN
            if self.first_token_at is not None:
                if any(kind in payload for kind in _OTHER_TOKENS):
                    self._counted += 1
                return _PLAIN
            if (
                payload.count(_CONTENT) == payload.count(_EMPTY_CONTENT)
                and not any(kind in payload for kind in _OTHER_TOKENS)
                and b'"reasoning' not in payload
                and payload.count(b'"finish_reason"') == payload.count(b'"finish_reason":null')
                and self._note_id(payload)
            ):
                # Before the first token: a chunk with no text (the role chunk
                # every stream opens with) is no token; nothing to parse.
                return _PLAIN
        self._parsed = None
        try:
            obj = orjson.loads(payload)
        except ValueError:
            return _EMPTY  # not JSON: no OpenAI client could read it, so it is dropped
        if not isinstance(obj, dict):
            return _EMPTY
        self._parsed = obj
        if obj.get("error"):
            self.error = obj["error"]
            return _ERROR
        if isinstance(obj.get("id"), str):
            self.last_id = obj["id"]
        usage = obj.get("usage")
        has_usage = False
        if isinstance(usage, dict):
            has_usage = True
            tokens = usage_count(usage.get("completion_tokens"))
            if tokens is not None:
                self.usage_tokens = tokens
            prompt = usage_count(usage.get("prompt_tokens"))
            if prompt is not None:
                self.usage_prompt_tokens = prompt
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices:
            return _USAGE if has_usage else _EMPTY
        token = False
        finish = False
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict) and (
                delta.get("content")
                or delta.get("tool_calls")
                or delta.get("reasoning_content")
                or delta.get("reasoning")
                or delta.get("refusal")
                or delta.get("function_call")
            ):
                token = True
            if choice.get("finish_reason"):
                self.finish_seen = finish = True
        if token:
            self._token(now)
        return _FINISH if finish else _PLAIN

    def _note_id(self, payload: bytes) -> bool:
        """``last_id`` from a compact ``"id":"..."`` without escapes (False: parse instead)."""
        at = payload.find(b'"id":"')
        if at < 0:
            return False
        start = at + 6
        end = payload.find(b'"', start)
        if end < 0 or 0x5C in payload[start:end] or b'"id":"' in payload[end:]:
            return False  # escaped, or more than one "id" member: let JSON decide
        self.last_id = payload[start:end].decode("utf-8", "replace")
        return True

    def _count_later(self, run: bytes) -> None:
        """Count ``run``'s content chunks when someone asks (``content_chunks``).

        Two searches of the whole run (~2 µs each per 3 KB), needed only for
        ``output_tokens`` of a stream without usage or for ``generation_seen``
        after a read that did not end the stream: a whole answer with usage, the
        common case, never pays them. One run is held at a time (the one before
        is counted when the next comes), so what is held stays one read.
        """
        self._count_held()
        self._uncounted = run

    def _count_held(self) -> None:
        """Count the run held by ``_count_later``, if any."""
        pending = self._uncounted
        if pending is not None:
            self._uncounted = None
            self._counted += pending.count(_CONTENT) - pending.count(_EMPTY_CONTENT)

    @property
    def content_chunks(self) -> int:
        """Content chunks seen (a chunk holding a tool call, refusal... counts too)."""
        self._count_held()
        return self._counted

    def _token(self, now: float) -> None:
        self._counted += 1
        if self.first_token_at is None:
            self.first_token_at = now

    def first_read_done(self) -> None:
        """The read with the first token is scanned: what follows shows generation.

        A stream that ended in that read (``done``: ``feed`` takes nothing more)
        can show none, which is known without counting its chunks (-1).
        """
        self._chunks_at_first_read = -1 if self.done else self.content_chunks

    @property
    def generation_seen(self) -> bool:
        """Some token arrived after the read that held the first one.

        When none did (the answer came in one read, as from an unpaced or
        cached provider), the time from the first token to the end measures
        this process, not the provider's generation.
        """
        first = self._chunks_at_first_read
        if first is None:
            return True
        return first >= 0 and self.content_chunks > first

    @property
    def output_tokens(self) -> int:
        """Upstream's count when it sent usage, else one per content chunk."""
        return self.usage_tokens if self.usage_tokens is not None else self.content_chunks

    @property
    def complete(self) -> bool:
        """A clean end: [DONE], or EOF after a finish_reason (some providers omit [DONE])."""
        return self.done or (self.finish_seen and self.error is None)


@dataclass(slots=True)
class StreamStart:
    """An upstream stream with its first token, or ended by a finish_reason without one."""

    resp: UpstreamResponse
    scanner: SSEScanner
    pending: bytes
    eof: bool


async def read_until_first_token(
    resp: UpstreamResponse, rec: AttemptRecord, scanner: SSEScanner
) -> StreamStart | None:
    """Read a 200 stream until its first content token, holding the bytes.

    Runs inside the caller's first-byte deadline. Returns None (with ``rec``
    marked failed) if the stream errors, ends empty or breaks first: every
    such failure may still move on to the next provider, as nothing reached
    the app yet.
    """
    pending: list[bytes] = []
    held = 0
    eof = False
    first = True
    while True:
        data = await resp.content.readany()
        now = time.perf_counter()
        if first:
            first = False
            if data.startswith(_BOM):  # else the first line is no data line, and dropped
                data = data[3:]
                if not data:
                    continue
        if not data:
            eof = True
            tail = scanner.flush(now)
            if tail:
                pending.append(tail)
            break
        fwd = scanner.feed(data, now)
        if fwd:
            pending.append(fwd)
            held += len(fwd)
            if held > scanner.max_line_bytes and scanner.first_token_at is None:
                # Comments (keep-alives), role chunks and blank lines are held until the
                # first token, and nothing bounded them: a provider sending 800 MB of
                # ": ..." lines took the sidecar to 4.6 GB before relaying all of it.
                rec.finish_error(  # like a line too long to hold: a server error
                    ErrorClass.SERVER_ERROR,
                    f"upstream sent over {scanner.max_line_bytes} bytes before its first token",
                    200,
                )
                return None
        if scanner.error is not None or scanner.first_token_at is not None or scanner.done:
            break
    if scanner.error is not None:
        rec.finish_error(ErrorClass.SERVER_ERROR, scanner.failure_text(), 200)
        return None
    if scanner.first_token_at is None and not scanner.finish_seen:
        # Without a token an end is clean only with a finish_reason (an empty answer,
        # which the model may give). A bare [DONE] says nothing was generated and
        # nothing why: a broken provider, so the next one is tried, as the contract
        # promises for a stream that ends before its first token.
        rec.finish_error(ErrorClass.STREAM_ABORT, _no_token_reason(resp, scanner.done), 200)
        return None
    if scanner.first_token_at is not None:
        rec.ttft_ms = (scanner.first_token_at - rec.t0) * 1000.0
    scanner.first_read_done()
    return StreamStart(resp, scanner, b"".join(pending), eof)


def _no_token_reason(resp: UpstreamResponse, done: bool) -> str:
    """Why a 200 stream gave no token: a JSON body is a provider that ignored
    ``stream: true`` (its answer is no SSE), which an operator must be able to tell
    from a stream that broke, or from one that said [DONE] without an answer."""
    if "json" in resp.headers.get("Content-Type", "").lower():
        return "upstream answered with a JSON body, not an event stream (stream: true ignored)"
    if done:
        return "stream ended with [DONE] before its first token and without a finish_reason"
    return "stream ended before the first token"


#: Bytes read after [DONE] before giving up on reusing the connection.
_DRAIN_LIMIT = 64 * 1024


class AppGone(Exception):
    """The app closed its connection mid-stream."""


async def relay(
    start: StreamStart, app: web.StreamResponse, rec: AttemptRecord, chunk_timeout_s: float
) -> None:
    """Forward the rest of the stream; on return ``rec`` says how it ended.

    Raises AppGone if the app disconnected (``rec`` then records that as the
    app's doing, not the provider's).
    """
    scanner, resp = start.scanner, start.resp
    eof = start.eof
    ended_cleanly = False
    # No timer for a stream that came whole with its first token (nothing left to wait for).
    idle = (
        None if eof or scanner.done or scanner.error is not None else IdleTimeout(chunk_timeout_s)
    )
    try:
        while not eof and not scanner.done and scanner.error is None:
            try:
                data = await resp.content.readany()
            except asyncio.CancelledError:
                if idle is None or not idle.absorb():
                    raise
                rec.finish_error(
                    ErrorClass.TIMEOUT,
                    f"no chunk for {chunk_timeout_s}s",
                    200,
                    scanner.output_tokens,
                )
                return
            except (aiohttp.ClientError, OSError) as exc:
                rec.finish_error(
                    classify_exception(exc, True),
                    f"upstream broke mid-stream: {break_text(exc, answered=True)}",
                    200,
                    scanner.output_tokens,
                )
                return
            assert idle is not None  # the loop only runs when it was created
            if b"\n" in data or (scanner.cr_lines and b"\r" in data):
                # Only a line that ended is a chunk: a provider trickling the bytes
                # of one line (a byte a second, never a newline) is silent to the app
                # and must not hold the stream open past chunk_timeout_s.
                idle.touch()
            now = time.perf_counter()
            if data:
                fwd = scanner.feed(data, now)
            else:
                eof = True
                fwd = scanner.flush(now)
            if fwd:
                idle.pause()
                try:
                    await app.write(fwd)
                except (ConnectionError, RuntimeError) as exc:
                    rec.finish_error(
                        ErrorClass.CLIENT_ERROR, "app disconnected", 499, scanner.output_tokens
                    )
                    raise AppGone from exc
                finally:
                    idle.resume()
        if scanner.error is not None:
            rec.finish_error(
                ErrorClass.STREAM_ABORT,
                scanner.failure_text(mid_stream=True),
                200,
                scanner.output_tokens,
            )
        elif scanner.complete:
            rec.finish_ok(scanner.output_tokens, scanner.first_token_at, scanner.generation_seen)
            ended_cleanly = True
        else:
            rec.finish_error(
                ErrorClass.STREAM_ABORT,
                "upstream closed the stream early",
                200,
                scanner.output_tokens,
            )
    finally:
        if idle is not None:
            idle.close()
        if eof:
            resp.release()
        elif not ended_cleanly:
            resp.close()  # do not return a half-read connection to the pool
        # else: [DONE] seen, the body's last bytes may still be in flight; the
        # caller finishes with release_upstream() once the app has its answer.


async def release_upstream(resp: UpstreamResponse, timeout_s: float = 1.0) -> None:
    """Give the upstream connection back to the pool, reading what follows [DONE] first.

    Providers send ``data: [DONE]`` and then the chunked-encoding terminator,
    often in a separate TCP segment. aiohttp closes, rather than pools, a
    connection whose body was not read to its end, so releasing right at
    [DONE] cost a new TCP (and, to real providers, TLS) handshake on about
    half of all streamed requests. A provider that keeps sending after [DONE]
    gets its connection closed after ``_DRAIN_LIMIT`` bytes or ``timeout_s``.
    """
    if resp.closed:
        return
    if resp.content.at_eof():  # the terminator came with [DONE]: nothing to wait for
        resp.release()
        return
    try:
        async with asyncio.timeout(timeout_s):
            left = _DRAIN_LIMIT
            while left > 0:
                data = await resp.content.readany()
                if not data:
                    resp.release()
                    return
                left -= len(data)
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass
    except BaseException:
        resp.close()
        raise
    resp.close()
