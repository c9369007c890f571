"""Query/Retrieve FIND SCP (PS3.4 C.4.1): one C-FIND request on an association.

The identifier arrives in P-DATA fragments (bounded); the query then runs on a
thread of its own (LMDB read transactions belong to one thread, and a large
scan must not stall the event loop) and hands encoded responses to the loop
through a small bounded window, so a slow reader of results throttles the
query instead of filling memory.  Responses cross threads in batches of up to
`_BATCH` (the first match alone, so it goes out at once): a large answer costs
one loop wake-up per batch, not per match.  C-CANCEL and the result cap stop it
between two matches.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Awaitable, Callable

from engine.config import QueryConfig
from engine.errors import EngineError
from engine.net import status as st
from engine.net.acse import AcceptedContext
from engine.net.dimse import (
    C_FIND_RSP, MAX_IDENTIFIER_LENGTH, Command, DatasetBuffer, encode_response)
from engine.ops.logs import redact_values
from engine.query.find import FindExecutor, FindQuery, InvalidQuery, decode_identifier

log = logging.getLogger(__name__)

_BATCH = 64  # encoded responses handed to the loop at once
_WINDOW = 4  # batches the query thread may run ahead of the socket

SendMessage = Callable[[int, bytes, bytes | None], Awaitable[None]]


def query_keys(query: FindQuery) -> dict[str, str]:
    """The keys of a query as the audit trail records them (keyword or tag → value)."""
    keys = {"QueryRetrieveLevel": query.level}
    for key in query.keys:
        keys[key.keyword or f"({key.tag >> 16:04X},{key.tag & 0xFFFF:04X})"] = key.text
    return keys


class FindOperation:
    """One C-FIND: collects the identifier, then streams matches until done or cancelled."""

    reads_while_running = True  # the peer may send C-CANCEL while results stream

    def __init__(self, context: AcceptedContext, command: Command, executor: FindExecutor,
                 config: QueryConfig, assoc_id: str, observer=None) -> None:
        self.context_id = context.context_id
        #: The association's AssociationObserver (engine.ops): audit record and metrics.
        self.observer = observer
        self.context = context
        self.command = command
        self._executor = executor
        self._config = config
        self.assoc_id = assoc_id
        self._identifier = DatasetBuffer(MAX_IDENTIFIER_LENGTH)
        self._stop = threading.Event()
        self.cancelled = False

    @property
    def message_id(self) -> int | None:
        return self.command.message_id

    def feed(self, fragment: memoryview) -> None:
        self._identifier.feed(fragment)

    def abort(self) -> None:
        self._stop.set()

    def cancel(self) -> None:
        """C-CANCEL-RQ for this message: stop after the current match."""
        self.cancelled = True
        self._stop.set()

    def _final(self, status: int, comment: str = "") -> bytes:
        return encode_response(C_FIND_RSP, self.command, status, comment)

    def _observe(self, status: int, keys: dict, matches: int, detail: str = "") -> None:
        if self.observer is not None:
            self.observer.queried(self.context.abstract_syntax, keys,
                                  self.context.transfer_syntax, status, matches,
                                  time.monotonic() - self._started, detail)

    async def run(self, send: SendMessage) -> None:
        """Send pending responses, then the final one, through `send(context, cmd, ds)`."""
        self._started = time.monotonic()
        ts = self.context.transfer_syntax
        if self._identifier.too_long:
            await send(self.context_id, self._final(st.FAILURE_UNABLE_TO_PROCESS,
                                                    "identifier too long"),
                       None)
            self._observe(st.FAILURE_UNABLE_TO_PROCESS, {}, 0, "identifier too long")
            return
        try:
            query = FindQuery.from_identifier(self.context.abstract_syntax,
                                              decode_identifier(bytes(self._identifier.data), ts),
                                              self._config.fuzzy_person_names,
                                              relational=self.context.relational_queries)
        except Exception as exc:  # InvalidQuery, or a bug: answer the peer either way
            status, comment = st.status_for_query_error(exc)
            if isinstance(exc, InvalidQuery):  # its text may quote a value: not in this log
                log.info("%s C-FIND refused with 0x%04X: %s", self.assoc_id, status,
                         redact_values(exc))
            else:
                log.exception("%s C-FIND identifier could not be processed", self.assoc_id)
            await send(self.context_id, self._final(status, comment), None)
            self._observe(status, {}, 0, f"refused: {comment}")
            return
        loop = asyncio.get_running_loop()
        results: asyncio.Queue = asyncio.Queue()
        window = threading.Semaphore(_WINDOW)
        cap = self._config.max_results

        def hand_over(batch: list[bytes]) -> bool:
            while not window.acquire(timeout=0.5):
                if self._stop.is_set():
                    return False
            if self._stop.is_set():
                return False
            loop.call_soon_threadsafe(results.put_nowait, ("matches", batch))
            return True

        def produce() -> None:
            outcome: tuple = ("done", None)
            count = 0
            batch: list[bytes] = []
            responses = self._executor.run_encoded(query, ts)
            try:
                for data in responses:
                    if self._stop.is_set():
                        break
                    if count == cap:
                        outcome = ("cap", None)
                        break
                    batch.append(data)
                    count += 1
                    if len(batch) >= _BATCH or count == 1:
                        if not hand_over(batch):
                            break
                        batch = []
                if batch and not self._stop.is_set():
                    hand_over(batch)
            except EngineError as exc:
                outcome = ("error", exc)
            except Exception as exc:  # a bug must end the request, not hang it
                log.exception("%s C-FIND failed", self.assoc_id)
                outcome = ("error", exc)
            finally:  # exactly one terminal item, whatever happened
                responses.close()  # ends the query's read transaction on this thread
                try:
                    loop.call_soon_threadsafe(results.put_nowait, outcome)
                except RuntimeError:
                    pass  # the event loop is gone (server stopped)

        thread = threading.Thread(target=produce, name=f"find-{self.assoc_id}", daemon=True)
        thread.start()
        matches = 0
        pending = encode_response(C_FIND_RSP, self.command, st.PENDING, has_dataset=True)
        try:
            while True:
                kind, payload = await results.get()
                if kind == "matches":
                    window.release()
                    for data in payload:
                        if self._stop.is_set():
                            break
                        await send(self.context_id, pending, data)
                        matches += 1
                    continue
                if self.cancelled:
                    status, comment = st.CANCEL, ""
                elif kind == "cap":
                    status, comment = (st.FAILURE_OUT_OF_RESOURCES,
                                       f"more than {cap} matches; narrow the query")
                elif kind == "error":
                    status, comment = st.status_for_query_error(payload)
                else:
                    status, comment = st.SUCCESS, ""
                await send(self.context_id, self._final(status, comment), None)
                if self.observer is not None:
                    self._observe(status, query_keys(query), matches)
                log.info("%s C-FIND %s level: %d matches%s", self.assoc_id, query.level,
                         matches, " (cancelled)" if self.cancelled else "")
                return
        finally:
            self._stop.set()
