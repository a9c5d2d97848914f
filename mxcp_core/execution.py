"""The runtime: compiled endpoints, the call path through the `call_endpoint` hook, lifecycle and reload."""
from __future__ import annotations

import contextlib
import contextvars
import enum
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from . import context, redaction
from .errors import ExecutionError, MxcpError, NotFoundError, ValidationError, suggest
from .features import missing_function_hint
from .records import (
    EndpointCall,
    EndpointDefinition,
    Executor,
    ProjectContext,
    ResourceDefinition,
    UserContext,
)
from .typesystem import CompiledParameters, CompiledReturn
from .workers import CallInterrupted, QueueTimeout, ThreadInterrupter, WorkerPool

if TYPE_CHECKING:
    from .project import Project

log = logging.getLogger(__name__)
# How long a reload that reads the project again waits for more requests of the same burst (see _reload_now).
BURST_SECONDS = 0.05

# The worker thread's interrupter for the call it runs: armed only while the endpoint's own code runs.
_interrupter: contextvars.ContextVar[ThreadInterrupter | None] = contextvars.ContextVar(
    "mxcp_interrupter", default=None)


class CallTimeout(ExecutionError):
    """A call ran longer than its timeout and was interrupted."""


class ReloadGate:
    """Calls share the database; a reload takes it exclusively. Calls arriving during a reload wait."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._exclusive = False
        self._waiting_exclusive = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting_exclusive:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if self._active == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(
        self, deadline: float | None = None, overdue: Callable[[], None] | None = None, grace: float = 5.0
    ) -> Iterator[None]:
        """Take the database once the calls in flight are done. After `deadline` seconds `overdue` interrupts
        them, and `grace` seconds later the holder proceeds anyway: a stuck call cannot block a reload forever."""
        give_up = None if deadline is None else time.monotonic() + deadline
        with self._cond:
            self._waiting_exclusive += 1
            try:
                while self._exclusive or self._active:
                    if give_up is None:
                        self._cond.wait()
                        continue
                    left = give_up - time.monotonic()
                    if left > 0:
                        self._cond.wait(left)
                        continue
                    if self._exclusive:  # another reload holds it: wait for that one, however long
                        self._cond.wait()
                        continue
                    if overdue is None:
                        log.error("%d call(s) ignored the interrupt: proceeding without them", self._active)
                        break
                    log.warning("%d call(s) still running after %gs: interrupting them", self._active, deadline)
                    interrupt, overdue = overdue, None
                    self._cond.release()
                    try:
                        interrupt()
                    finally:
                        self._cond.acquire()
                    give_up = time.monotonic() + grace
            finally:
                self._waiting_exclusive -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


@attrs.define(eq=False)
class CompiledEndpoint:
    """An endpoint with its validators built once, when the runtime starts."""

    definition: EndpointDefinition
    parameters: CompiledParameters
    returns: CompiledReturn

    @property
    def kind(self) -> str:
        return self.definition.kind

    @property
    def key(self) -> str:
        return self.definition.key


def compile_endpoint(definition: EndpointDefinition) -> CompiledEndpoint:
    """Build an endpoint's argument and result validators (and its JSON schemas) once."""
    return CompiledEndpoint(
        definition=definition,
        parameters=CompiledParameters(definition.parameters),
        returns=CompiledReturn(definition.return_type),
    )


class Phase(str, enum.Enum):
    """How far a runtime starts. Each phase includes the ones before it."""

    DATABASE = "database"  # the database open: extensions, DuckDB secrets, functions (`mxcp query`)
    CHECKING = "checking"  # endpoints compiled, executors started, the database read-only; no on_init (`validate`)
    SERVING = "serving"  # on_init run: calls may come (`serve`, `run`, `test`)


class Runtime:
    """A started project: the database open, executors ready, lifecycle hooks run (as far as its `phase`)."""

    def __init__(self, project: Project, *, skip_invalid: bool = False, phase: Phase | str = Phase.SERVING) -> None:
        from .database import open_engine

        self.project = project
        self.hooks = project.hooks
        self.phase = Phase(phase)
        self.context = _checking_context(project.context) if self.phase is Phase.CHECKING else project.context
        self.database = open_engine(self.context, project.hooks)
        self.gate = ReloadGate()
        self.skip_invalid = skip_invalid
        self.compiled: dict[tuple[str, str], CompiledEndpoint] = {}
        self._templates: list[tuple[ResourceDefinition, UriTemplateMatcher]] = []
        self._dropped: dict[tuple[str, str], str] = {}  # skipped after failing their checks, with why
        self._started = False
        # Executors that failed to start while checking (the checking phase reports rather than stops).
        self.start_problems: list[str] = []
        self._reload_lock = threading.Lock()
        self._reloads: list[threading.Thread] = []
        self.reload_count = 0
        self._loop: Any = None
        self._loop_thread: threading.Thread | None = None
        self._loop_lock = threading.Lock()
        self._pool: WorkerPool | None = None
        self._calls_lock = threading.Lock()
        self._active_calls: set[EndpointCall] = set()
        # Why the runtime cannot serve (its last reload failed to start it again): /health answers 503 with it.
        self.unavailable: str | None = None
        # Why the last reload could not take the project read again (the previous set is still served).
        self.config_problem: str | None = None
        self._config_requests = 0  # reloads asked to read the project again, numbered in order
        self._config_applied = 0  # the newest of them whose reading was applied (or refused)
        self._reading: set[threading.Thread] = set()  # reload threads not yet past reading the project
        self._stopping = False
        # Reloads that re-read the project refuse a new set with an invalid endpoint (serve --ignore-errors: skip it).
        self.refuse_invalid = not skip_invalid
        # Bumped each time a reload swaps in new definitions: the server rebuilds its lists when it changes.
        self.generation = 0
        self._reload_listeners: list[Callable[[], None]] = []
        # True while a reload shuts down and starts again: on_shutdown hooks may keep what outlives it.
        self.reloading = False

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Enter the runtime's phase: the database alone, then executors (checking), then on_init (serving)."""
        if self._started:
            return
        self._stopping = False
        # Whatever is logged from now on (tracebacks of user code included) masks this profile's secret values.
        redaction.register_secrets(self.context.secrets())
        if self.phase is not Phase.DATABASE:
            self._compile()
        self.database.open()
        if self.phase is Phase.DATABASE:
            self._started = True
            return
        try:
            for executor in self.project.executors().values():
                try:
                    executor.start(self)
                except MxcpError as exc:
                    if self.phase is not Phase.CHECKING:
                        raise
                    # Checking reports every problem it can: the other executors' endpoints are still checked.
                    self.start_problems.append(str(exc))
            self._started = True
            if self.phase is Phase.SERVING:
                self._run_hook(self.hooks.on_init)
        except BaseException:
            # A half-done start releases what it took (import path, user modules, the database file).
            self._started = False
            self._stop_executors()
            self.database.close(final=True)
            raise

    def _compile(self) -> None:
        registry = self.project.endpoints()
        if registry.invalid and not self.skip_invalid:
            problems = "\n".join(f"  {bad.origin}: {bad.message}" for bad in registry.invalid)
            raise MxcpError(f"{len(registry.invalid)} invalid endpoint(s):\n{problems}")
        for definition in registry.all():
            self.compiled[(definition.kind, definition.key)] = compile_endpoint(definition)
            if isinstance(definition, ResourceDefinition) and definition.is_template:
                self._templates.append((definition, UriTemplateMatcher(definition.uri)))

    def stop(self) -> None:
        """Wait for scheduled reloads, run on_shutdown (when serving), stop executors, close the database."""
        if not self._started:
            return
        with self._reload_lock:
            # A reload still reading the user config (a secret store may take its whole timeout) is abandoned:
            # it gives up when its reading ends. One that went on to reopen the database is waited for.
            self._stopping = True
        self.wait_for_reloads()
        if self.phase is Phase.SERVING:
            self._run_hook(self.hooks.on_shutdown)
        if self.phase is not Phase.DATABASE:
            self._stop_executors()
        self._stop_user_loop()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self.database.close(final=True)
        self._started = False

    def _stop_executors(self) -> None:
        for executor in self.project.executors().values():
            try:
                executor.stop()
            except Exception:
                log.exception("stopping executor '%s' failed", executor.language)

    def __enter__(self) -> Runtime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_hook(self, hook: Callable[..., None]) -> None:
        with context.bound(self):
            hook(runtime=self)

    @property
    def started(self) -> bool:
        return self._started

    # -- what plugins use (the RuntimeView protocol) -----------------------------------------------
    def endpoints(self) -> list[CompiledEndpoint]:
        """The compiled endpoints this runtime serves."""
        return list(self.compiled.values())

    def compiled_endpoint(self, kind: str, key: str) -> CompiledEndpoint | None:
        return self.compiled.get((kind, key))

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        """A fresh cursor of the profile's engine for work outside a call (inside one, use `mxcp.runtime.db`)."""
        with self.database.cursor() as cursor:
            yield cursor

    def register_plugin(self, plugin: Any, name: str) -> bool:
        """Add a plugin object for the rest of this runtime's life (e.g. lifecycle hooks of user modules)."""
        return self.project.host.register(plugin, name)

    def unregister_plugin(self, name: str) -> None:
        self.project.host.unregister(name)

    def drop(self, kind: str, key: str, reason: str | None = None) -> None:
        """Stop serving one endpoint (serve --ignore-errors skips the ones that fail their checks)."""
        self.compiled.pop((kind, key), None)
        if reason:
            self._dropped[(kind, key)] = reason
        self._templates = [(d, m) for d, m in self._templates if (d.kind, d.key) != (kind, key)]

    # -- lookup --------------------------------------------------------------------------------
    def visible(self, definition: EndpointDefinition, user: UserContext | None) -> bool:
        """Whether `user` may see (and so call) the endpoint: plugins decide (`endpoint_visible`)."""
        if user is None or not self.hooks.decides_visibility:
            return True
        return self.hooks.endpoint_visible(definition, user, self.context)

    def endpoint(
        self, kind: str, name: str, user: UserContext | None = None
    ) -> tuple[CompiledEndpoint, dict[str, Any]]:
        """The compiled endpoint for a name (a URI for resources), with arguments taken from a URI template.

        With `user`, an endpoint hidden from that user is not found, with the very message of an unknown name.
        """
        found = self._lookup(kind, name)
        if found is not None and self.visible(found[0].definition, user):
            return found
        known = [key for (k, key), compiled in self.compiled.items()
                 if k == kind and self.visible(compiled.definition, user)]
        if found is not None:
            raise NotFoundError(f"{kind} '{name}' not found{suggest(name, known)}")
        if kind not in {"tool", "resource", "prompt"}:
            raise NotFoundError(f"unknown endpoint kind '{kind}' (expected tool, resource or prompt)")
        why = self._dropped.get((kind, name))
        if why is None:
            why = next((bad.message for bad in self.project.endpoints().invalid
                        if bad.name == name and bad.kind == kind), None)
        if why is not None:
            # Skipped as invalid (`mxcp run`, `serve --ignore-errors`): say why rather than "not found".
            raise NotFoundError(f"{kind} '{name}' is not served: {why}")
        raise NotFoundError(f"{kind} '{name}' not found{suggest(name, known)}")

    def _lookup(self, kind: str, name: str) -> tuple[CompiledEndpoint, dict[str, Any]] | None:
        served = self.compiled  # one reading: a reload may swap in new definitions meanwhile
        compiled = served.get((kind, name))
        if compiled is not None:
            return compiled, {}
        if kind == "resource":
            for definition, matcher in self._templates:
                values = matcher.match(name)
                if values is not None and ("resource", definition.key) in served:
                    return served[("resource", definition.key)], values
        return None

    # -- calls ---------------------------------------------------------------------------------
    def prepare_call(
        self,
        kind: str,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        caller: str = "cli",
        user: UserContext | Mapping[str, Any] | None = None,
        session_id: str | None = None,
        found: tuple[CompiledEndpoint, dict[str, Any]] | None = None,
    ) -> tuple[CompiledEndpoint, EndpointCall]:
        """Find the endpoint (if `user` may see it) and validate the arguments (defaults applied, formats converted).

        `found`: what `endpoint(kind, name, user)` already returned for this call (the server looks up first)."""
        if user is None:
            user = UserContext.anonymous()
        elif not isinstance(user, UserContext):
            try:
                user = UserContext.from_mapping(user)
            except TypeError as exc:
                raise ValidationError(str(exc)) from None
        compiled, from_uri = found if found is not None else self.endpoint(kind, name, user)
        given = {**from_uri, **(arguments or {})}
        validated = compiled.parameters.validate(given)
        call = EndpointCall(
            endpoint=compiled.definition,
            compiled=compiled,
            arguments=validated,
            runtime=self,
            caller=caller,
            user=user,
            session_id=session_id,
            trace_id=uuid.uuid4().hex,
            max_rows=self.context.site.limits.max_rows,
        )
        return compiled, call

    def invoke(self, call: EndpointCall) -> Any:
        """Run a prepared call through the hook chain (blocking; call from a worker thread when serving)."""
        with self.gate.shared(), context.bound(self, call), self._tracked(call):
            # A call that timed out or was cancelled while it waited (e.g. behind a reload) must not run later.
            if call.cancelled:
                raise ExecutionError("call cancelled before it started")
            if self.unavailable:
                raise ExecutionError(f"the server cannot run calls: {self.unavailable}")
            if call.compiled is not None and self.compiled.get((call.endpoint.kind, call.endpoint.key)) \
                    is not call.compiled:
                self._refit(call)
            try:
                return self.hooks.call_endpoint(call=call)
            except MxcpError as exc:
                # Messages may quote what user code or DuckDB saw: never a secret or a sensitive argument.
                text = str(exc)
                host = self.project.host
                masked = redaction.mask(text, call) + missing_function_hint(
                    text, host.pm.has_plugin, frozenset(host.disabled))
                if masked == text:
                    raise
                raise type(exc)(masked) from None

    def _refit(self, call: EndpointCall) -> None:
        """A call prepared before a reload swapped the definitions runs on the new ones (it had not started)."""
        kind, key = call.endpoint.kind, call.endpoint.key
        current = self.compiled.get((kind, key))
        if current is None or not self.visible(current.definition, call.user):
            raise NotFoundError(f"{kind} '{key}' is no longer served: the definitions were reloaded while the call "
                                "waited")
        if current.definition.parameters != call.endpoint.parameters:
            try:
                call.arguments = current.parameters.validate(call.arguments)
            except ValidationError as exc:
                raise ValidationError(f"{kind} '{key}' changed its parameters while the call waited for a reload: "
                                      f"{exc}") from None
        call.endpoint, call.compiled = current.definition, current

    @contextmanager
    def _tracked(self, call: EndpointCall) -> Iterator[None]:
        """Calls in flight, so that a reload past its deadline can interrupt them."""
        with self._calls_lock:
            self._active_calls.add(call)
        try:
            yield
        finally:
            with self._calls_lock:
                self._active_calls.discard(call)

    def _interrupt_active_calls(self) -> None:
        with self._calls_lock:
            calls = list(self._active_calls)
        for call in calls:
            call.interrupt()

    def call(self, kind: str, name: str, arguments: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """Validate and run one call, blocking."""
        _, call = self.prepare_call(kind, name, arguments, **options)
        return self.invoke(call)

    async def call_async(
        self,
        kind: str,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> Any:
        """Run a call in a worker thread; cancellation or timeout interrupts the running query."""
        value, _ = await self.call_async_with_call(kind, name, arguments, timeout=timeout, **options)
        return value

    async def call_async_with_call(
        self,
        kind: str,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> tuple[Any, EndpointCall]:
        """`call_async`, also returning the call (its notes say, e.g., whether the result was truncated)."""
        import asyncio

        import anyio

        compiled, call = self.prepare_call(kind, name, arguments, **options)
        limit = timeout or compiled.definition.timeout or self.context.site.timeout
        try:
            # asyncio's own timeout (the server and `mxcp run` run on asyncio): an anyio cancel scope per call
            # would cost a fifth of a trivial call.
            async with asyncio.timeout(limit):
                deadline = time.monotonic() + limit
                return await self.pool.run(self._invoke_in_worker, call, deadline=deadline), call
        except TimeoutError:
            call.interrupt()
            raise CallTimeout(f"{compiled.kind} '{compiled.definition.key}' timed out after {limit:g}s") from None
        except QueueTimeout:
            raise CallTimeout(f"{compiled.kind} '{compiled.definition.key}' timed out after {limit:g}s waiting "
                              "for a free worker (the server is busy)") from None
        except anyio.get_cancelled_exc_class():
            call.interrupt()
            raise

    @property
    def pool(self) -> WorkerPool:
        """The worker threads that serve calls (`limits.workers`, `limits.queue` of mxcp-site.yml)."""
        if self._pool is None:
            limits = self.context.site.limits
            self._pool = WorkerPool(limits.workers, limits.queue)
        return self._pool

    def _invoke_in_worker(self, call: EndpointCall) -> Any:
        # An interrupt (timeout, cancellation, a reload past its deadline) stops the body's Python code in this
        # thread too, not only a DuckDB query (see execute_body).
        interrupter = ThreadInterrupter()
        token = _interrupter.set(interrupter)
        call.on_interrupt(interrupter.fire)
        try:
            return self.invoke(call)
        except Exception:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit and the like must fail this call, not the server
            raise ExecutionError(_fatal_message(exc, call.endpoint)) from None
        finally:
            interrupter.close()
            _interrupter.reset(token)

    def run_async(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run an async endpoint or hook on the runtime's own event loop and wait for it (from a worker thread).

        Not the server's loop: endpoint code may block (a `db.execute` inside an async function), and that must
        never stall the protocol. One loop for all user coroutines, so async clients made in `@on_init` keep
        working in every call. Cancellation or a timeout of the call cancels the coroutine.
        """
        import asyncio
        import concurrent.futures

        definition = getattr(context.current_call.get(), "endpoint", None)
        future = asyncio.run_coroutine_threadsafe(_contained(func(*args), definition), self._user_loop())
        call = context.current_call.get()
        if call is not None:
            call.on_interrupt(future.cancel)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise ExecutionError("call cancelled") from None

    def _user_loop(self) -> Any:
        import asyncio

        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="mxcp-user-loop", daemon=True)
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    def _stop_user_loop(self) -> None:
        with self._loop_lock:
            loop, thread, self._loop, self._loop_thread = self._loop, self._loop_thread, None, None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            if not thread.is_alive():
                loop.close()

    def execute_body(self, call: EndpointCall) -> Any:
        """The innermost step of every call: the executor runs the body, the result is shaped and checked."""
        definition, compiled = call.endpoint, call.compiled
        if definition.kind == "prompt":
            from .prompts import render_messages

            return render_messages(definition.messages, call.arguments)
        interrupter = _interrupter.get()
        try:
            with interrupter.armed() if interrupter is not None else contextlib.nullcontext():
                if definition.function is not None:
                    raw = definition.function(**call.arguments)
                    if _is_awaitable(raw):
                        raw = self.run_async(_await, raw)
                else:
                    executor = self.executor_for(definition)
                    raw = executor.execute(call)
        except Exception:
            raise
        except KeyboardInterrupt:
            if threading.current_thread() is threading.main_thread():
                raise  # Ctrl-C at the command line
            raise ExecutionError(_fatal_message(KeyboardInterrupt(), definition)) from None
        except BaseException as exc:  # noqa: BLE001 - sys.exit() in an endpoint fails the call, not the server
            raise ExecutionError(_fatal_message(exc, definition)) from None
        shaped = shape_result(raw, compiled.returns.kind, definition)
        if isinstance(shaped, list):
            shaped = self._cap_rows(call, shaped)
        result = compiled.returns.validate(shaped)
        return self._cap_bytes(call, result)

    def _cap_rows(self, call: EndpointCall, rows: list[Any]) -> list[Any]:
        limit = call.max_rows
        more = bool(getattr(rows, "more", False))  # the executor stopped fetching past the limit
        if limit is None or (len(rows) <= limit and not more):
            return rows
        total = None if more else len(rows)
        rows = list(rows[:limit])
        call.notes["truncated"] = {"reason": "limits.max_rows", "limit": limit, "rows_returned": len(rows),
                                   "rows_total": total}
        return rows

    def _cap_bytes(self, call: EndpointCall, result: Any) -> Any:
        """Keep the JSON form of a result under `limits.max_result_bytes`: an array loses its last rows.

        The JSON made for measuring is kept on the call (`encoded_result`): the server sends it rather than
        encoding the same result again.
        """
        from pydantic_core import to_json

        from .typesystem import to_jsonable

        limit = self.context.site.limits.max_result_bytes
        data = to_jsonable(result)
        encoded = data.encode("utf-8") if isinstance(data, str) else to_json(data)
        if len(encoded) <= limit:
            call.notes[ENCODED_RESULT] = (result, data, encoded)
            return result
        what = f"{call.endpoint.kind} '{call.endpoint.key}'"
        if not isinstance(result, list):
            raise ExecutionError(f"{what} returned {len(encoded)} bytes, more than limits.max_result_bytes "
                                 f"({limit}) of mxcp-site.yml")
        del encoded
        kept, used = 0, 2  # the brackets
        for row in data:
            used += len(to_json(row)) + 1
            if used > limit:
                break
            kept += 1
        earlier = call.notes.get("truncated")
        total = earlier["rows_total"] if earlier else len(result)
        call.notes["truncated"] = {"reason": "limits.max_result_bytes", "limit": limit, "rows_returned": kept,
                                   "rows_total": total}
        return result[:kept]

    def executor_for(self, definition: EndpointDefinition) -> Executor:
        try:
            return self.project.executors()[definition.language or ""]
        except KeyError:
            raise ExecutionError(f"no executor for language '{definition.language}'") from None

    # -- reload --------------------------------------------------------------------------------
    def reload(self, payload: Callable[[], Any] | None = None, description: str = "", *, config: bool = False) -> None:
        """Schedule: drain calls, shut down, run the payload with exclusive access, start again.

        With `config` (SIGHUP, `serve --watch`), the project is read again first: the site and user config, their
        secrets, and every endpoint file, checked completely. Only a valid new set is swapped in; otherwise the
        server goes on with the definitions and configuration it had, and says why (`config_problem`).
        """
        with self._reload_lock:
            if self._stopping:
                return
            self._reloads = [t for t in self._reloads if t.is_alive()]
            request = 0
            if config:
                self._config_requests += 1
                request = self._config_requests
            thread = threading.Thread(target=self._reload_now, name="mxcp-reload", daemon=True,
                                      args=(payload, description, request))
            self._reloads.append(thread)
            self._reading.add(thread)
        thread.start()

    def add_reload_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` (from the reload's thread) after each reload that installed definitions (a new set, or
        the old one put back); `generation` tells whether they differ from what the listener saw."""
        self._reload_listeners.append(listener)

    def _reload_now(self, payload: Callable[[], Any] | None, description: str, config_request: int = 0) -> None:
        """`config_request` (0: none): the number of this reload among those that read the project again."""
        about = f" ({description})" if description else ""
        if config_request and payload is None:
            # A burst (a `kill -HUP` loop, an editor saving several files) arrives within milliseconds: wait that
            # long, so only its last request reads the project, however slowly the machine schedules the threads.
            time.sleep(BURST_SECONDS)
            if self._ends_here(config_request, payload, about, read=False):
                return
        # Read and check before draining: resolving references may wait on a secret store, and parsing a large
        # project takes a while; calls go on meanwhile.
        staged, problem = self._stage() if config_request else (None, None)
        if self._ends_here(config_request, payload, about, read=True):
            return
        deadline = self.context.site.limits.reload_deadline
        swapped = False
        with self.gate.exclusive(deadline=deadline, overdue=self._interrupt_active_calls), self._reloading():
            log.info("reload started%s", about)
            # Two reloads close together may finish reading out of order: an older reading never replaces a
            # newer one (it could hold a secret rotated since, or an endpoint file edited since).
            newest = config_request > self._config_applied
            if newest:
                self._config_applied = config_request
                if staged is None:
                    self.config_problem = problem
                    log.error("reload%s kept the previous definitions and configuration: %s", about, problem)
            swap = staged if newest else None
            self._run_hook_logged(self.hooks.on_shutdown, "on_shutdown")
            modules = dict(sys.modules) if swap is not None else {}
            if swap is not None:
                self._stop_executors()
            self.database.close()
            previous = self._install(swap) if swap is not None else None
            if payload is not None:
                self.database.paused = True
                try:
                    with context.bound(self):
                        payload()
                except Exception:
                    log.exception("reload payload failed%s", about)
                finally:
                    self.database.paused = False
            problem = self._restart(executors=swap is not None)
            if swap is not None and problem is None:
                problem = self._check_served_bodies()
                if problem is not None:  # started, but some body is invalid: undo the start before going back
                    self._run_hook_logged(self.hooks.on_shutdown, "on_shutdown")
                    self._stop_executors()
                    self.database.close()
            if previous is not None and problem is not None:
                # All or nothing: the new set cannot serve, so the old one serves on, with its own code (the
                # modules the old executors loaded go back into sys.modules, not the files changed on disk).
                log.error("reload%s: the new definitions cannot serve (%s); serving the previous ones", about,
                          problem)
                self.config_problem = problem
                self._install(previous)
                for name, module in modules.items():
                    sys.modules.setdefault(name, module)
                problem = self._restart(executors=True)
            elif swap is not None:
                self.config_problem = None
                swapped = True
            if problem is not None:
                log.error("restarting after the reload failed%s: %s; trying once more", about, problem)
                # All or nothing: what did start was undone; start again from scratch (a passing failure of
                # on_init). Never a half-started runtime: either all of it serves or no call runs.
                problem = self._restart(executors=swap is not None)
            # Until a reload succeeds, calls are refused with the reason and /health answers 503 with it.
            self.unavailable = problem
            self.reload_count += 1
            if problem is not None:
                log.error("reload failed%s: %s; calls are refused until a reload succeeds", about, problem)
            else:
                log.info("reload finished%s%s", about, " with new definitions" if swapped else "")
        if swap is not None:  # new definitions, or the old ones back after a request saw the new ones
            for listener in list(self._reload_listeners):
                try:
                    listener()
                except Exception:  # noqa: BLE001 - a listener's bug must not undo a finished reload
                    log.exception("a reload listener failed")

    def _ends_here(self, config_request: int, payload: Any, about: str, *, read: bool) -> bool:
        """Whether this reload stops before draining: the server is stopping, or a newer reload reads the project
        after it (a burst of SIGHUPs or saves costs one drain and restart, not one each). `read`: its reading is
        over, so it no longer holds up a stop."""
        with self._reload_lock:
            superseded = bool(config_request and payload is None and config_request < self._config_requests)
            if read or self._stopping or superseded:
                self._reading.discard(threading.current_thread())
            if self._stopping:
                log.info("reload%s abandoned: the server is stopping", about)
            elif superseded:
                log.info("reload%s superseded by a newer one", about)
            return self._stopping or superseded

    @contextmanager
    def _reloading(self) -> Iterator[None]:
        self.reloading = True
        try:
            yield
        finally:
            self.reloading = False

    def _stage(self) -> tuple[_Staged | None, str | None]:
        """The project read again and checked completely, ready to swap in; or why not (the old one stays)."""
        from .project import reread_project

        try:
            fresh = reread_project(self.project)
            registry = fresh.endpoints()
            if registry.invalid and self.refuse_invalid:
                raise MxcpError(_invalid_listing([(bad.origin, bad.message) for bad in registry.invalid]))
            staged = _Staged(project=fresh)
            for bad in registry.invalid:
                log.warning("reload: skipping invalid endpoint %s (%s): %s", bad.name or bad.origin, bad.origin,
                            bad.message)
                if bad.name:
                    staged.dropped[(bad.kind, bad.name)] = bad.message
            _refuse_engine_change(self.context, fresh.context)
            _warn_start_only_changes(self.context, fresh.context)
            for definition in registry.all():
                staged.compiled[(definition.kind, definition.key)] = compile_endpoint(definition)
                if isinstance(definition, ResourceDefinition) and definition.is_template:
                    staged.templates.append((definition, UriTemplateMatcher(definition.uri)))
            return staged, None
        except Exception as exc:  # noqa: BLE001 - a plugin's bug while reading must not stop the reload itself
            if not isinstance(exc, MxcpError):
                log.debug("reading the project again failed", exc_info=True)
            return None, redaction.mask(str(exc) or type(exc).__name__)

    def _install(self, staged: _Staged) -> _Staged:
        """Serve `staged` (a project read again, or the previous one put back); returns what was served."""
        previous = _Staged(project=self.project, compiled=self.compiled, templates=self._templates,
                           dropped=self._dropped)
        self.project = staged.project
        self.context = staged.project.context
        self.database.project = self.context
        redaction.register_secrets(self.context.secrets())
        self._templates, self.compiled, self._dropped = staged.templates, staged.compiled, staged.dropped
        # Lists built from the definitions (the server's catalog) are rebuilt when they see a new generation; a
        # set put back counts too, since a request may have seen the refused one meanwhile.
        self.generation += 1
        return previous

    def _check_served_bodies(self) -> str | None:
        """`mxcp validate`'s checks of the bodies (SQL prepared, Python functions), as `serve` runs at start."""
        from .validation import check_bodies

        broken = []
        for (kind, key), compiled in list(self.compiled.items()):
            errors = [p for p in check_bodies(self, [compiled.definition]) if p.severity == "error"]
            if errors:
                broken.append((kind, key, compiled.definition.origin, "; ".join(p.message for p in errors)))
        if broken and self.refuse_invalid:
            return _invalid_listing([(origin, message) for _, _, origin, message in broken])
        for kind, key, origin, message in broken:
            log.warning("reload: skipping invalid endpoint %s (%s): %s", key, origin, message)
            self.drop(kind, key, reason=message)
        return None

    def _restart(self, *, executors: bool = False) -> str | None:
        """Open the database (start the executors) and run on_init; on failure, undo all of it and say why."""
        try:
            self.database.open()
            if executors:
                for executor in self.project.executors().values():
                    executor.start(self)
            self._run_hook(self.hooks.on_init)
            return None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a reload thread has no caller (sys.exit() included)
            log.debug("restart failed", exc_info=True)
            reason = redaction.mask(str(exc) or type(exc).__name__) if isinstance(exc, Exception) else (
                _fatal_message(exc, None))
            self._run_hook_logged(self.hooks.on_shutdown, "on_shutdown")
            if executors:
                self._stop_executors()
            self.database.close()
            return reason

    def _run_hook_logged(self, hook: Callable[..., None], name: str) -> None:
        try:
            self._run_hook(hook)
        except Exception:
            log.exception("%s failed during a reload", name)

    @property
    def health(self) -> tuple[bool, str | None]:
        """Whether the runtime can serve calls, and why not: for /health."""
        if self.unavailable:
            return False, f"the last reload failed and calls are refused: {self.unavailable}"
        return True, None

    def wait_for_reloads(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._reload_lock:
                pending = [t for t in self._reloads if t.is_alive() and not (self._stopping and t in self._reading)]
            if not pending:
                return
            for thread in pending:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if deadline is not None and time.monotonic() >= deadline:
                return


@attrs.define(eq=False)
class _Staged:
    """A set of definitions a reload can swap in: the project read again, compiled."""

    project: Project
    compiled: dict[tuple[str, str], CompiledEndpoint] = attrs.Factory(dict)
    templates: list[tuple[ResourceDefinition, UriTemplateMatcher]] = attrs.Factory(list)
    dropped: dict[tuple[str, str], str] = attrs.Factory(dict)


SHOWN_PROBLEMS = 5  # invalid endpoints named in a refusal (log line and /health); the rest are counted


def _invalid_listing(problems: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{origin}: {message}" for origin, message in problems[:SHOWN_PROBLEMS])
    more = f"; and {len(problems) - SHOWN_PROBLEMS} more (mxcp validate lists them all)" \
        if len(problems) > SHOWN_PROBLEMS else ""
    return f"{len(problems)} invalid endpoint(s): {shown}{more}"


def _warn_start_only_changes(current: ProjectContext, fresh: ProjectContext) -> None:
    """Settings a server applies when it starts: a reload takes the rest, and says these wait for a restart."""
    waiting = [name for name, before, after in (
        ("limits.workers", current.site.limits.workers, fresh.site.limits.workers),
        ("limits.queue", current.site.limits.queue, fresh.site.limits.queue),
        ("transport (user config)", current.user.transport, fresh.user.transport),
        ("description (the instructions clients get when they connect)", current.site.description,
         fresh.site.description),
    ) if before != after]
    if waiting:
        log.warning("reload: %s changed; %s applied when the server starts: restart it to apply %s",
                    ", ".join(waiting), "it is" if len(waiting) == 1 else "they are",
                    "it" if len(waiting) == 1 else "them")


def shape_result(raw: Any, kind: str, definition: EndpointDefinition) -> Any:
    """Fit rows to the declared return type: array → rows, object → exactly one row, scalar → one value."""
    rows = raw if isinstance(raw, list) else None
    if kind == "object" and rows is not None:
        if len(rows) != 1:
            raise ExecutionError(
                f"{definition.kind} '{definition.key}' must return exactly one row for an object result, "
                f"got {len(rows)}"
            )
        return rows[0]
    if kind == "scalar" and rows is not None:
        if len(rows) != 1:
            raise ExecutionError(
                f"{definition.kind} '{definition.key}' must return exactly one row for a scalar result, "
                f"got {len(rows)}"
            )
        row = rows[0]
        if isinstance(row, Mapping):
            if len(row) != 1:
                raise ExecutionError(
                    f"{definition.kind} '{definition.key}' must return exactly one column for a scalar result, "
                    f"got {len(row)}"
                )
            return next(iter(row.values()))
        return row
    return raw


# `call.notes` key: (result, its JSON-ready form, its JSON bytes), made once while checking the size.
ENCODED_RESULT = "encoded_result"


def truncation_text(truncated: Mapping[str, Any]) -> str:
    """What a cut result tells its reader (the model in a tool result, the user on stderr)."""
    total = truncated.get("rows_total")
    of = f" of {total}" if total is not None else ""
    return (f"[truncated: {truncated['rows_returned']}{of} rows returned; the server's limit "
            f"{truncated['reason']} is {truncated['limit']}]")


class UriTemplateMatcher:
    """Matches resource URI templates: `{var}` is one path segment, `{+var}` may span several (RFC 6570 level 2)."""

    def __init__(self, template: str) -> None:
        import re

        parts = re.split(r"(\{[^}]+\})", template)
        pattern = ""
        for part in parts:
            if part.startswith("{") and part.endswith("}"):
                name = part[1:-1].lstrip("+")
                greedy = part[1] == "+"
                pattern += f"(?P<{name}>{'.+' if greedy else '[^/]+'})"
            else:
                pattern += re.escape(part)
        self._regex = re.compile(f"^{pattern}$")

    def match(self, uri: str) -> dict[str, str] | None:
        found = self._regex.match(uri)
        return found.groupdict() if found else None


def _refuse_engine_change(current: Any, fresh: Any) -> None:
    """The SQL engine is chosen at start: a reload cannot move the served data to another engine."""
    before = current.site.profile_config(current.profile).sql
    after = fresh.site.profile_config(fresh.profile).sql
    if (before.engine, before.secret) != (after.engine, after.secret):
        raise MxcpError(f"profiles.{fresh.profile}.sql changed (engine {before.engine} -> {after.engine}, secret "
                        f"{before.secret} -> {after.secret}); the SQL engine is chosen at start: restart the server "
                        "to apply it")


def _checking_context(project_context: Any) -> Any:
    """Checking never writes: an existing database file opens read-only, a missing one is not created."""
    if project_context.duckdb_path == ":memory:":
        return project_context
    if Path(project_context.duckdb_path).exists():
        return attrs.evolve(project_context, readonly=True)
    return attrs.evolve(project_context, duckdb_path=":memory:")



def _is_awaitable(value: Any) -> bool:
    import inspect

    return inspect.isawaitable(value)


async def _await(awaitable: Any) -> Any:
    return await awaitable


async def _contained(coroutine: Any, definition: EndpointDefinition | None) -> Any:
    """Run user code on the user loop: a SystemExit escaping a coroutine would stop the loop for every call."""
    import asyncio

    try:
        return await coroutine
    except (Exception, asyncio.CancelledError):
        raise
    except BaseException as exc:  # noqa: BLE001
        raise ExecutionError(_fatal_message(exc, definition)) from None


def _fatal_message(exc: BaseException, definition: EndpointDefinition | None) -> str:
    what = f"{definition.kind} '{definition.key}'" if definition is not None else "the code"
    if isinstance(exc, CallInterrupted):
        return f"{what} was interrupted (it ran past its timeout, was cancelled, or held up a reload)"
    if isinstance(exc, SystemExit):
        return f"{what} called sys.exit({exc.code!r}): the call failed; the server keeps running"
    return f"{what} raised {type(exc).__name__}: the call failed; the server keeps running"


__all__ = [
    "CallTimeout",
    "CompiledEndpoint",
    "NotFoundError",
    "Phase",
    "ReloadGate",
    "Runtime",
    "UriTemplateMatcher",
    "ValidationError",
    "compile_endpoint",
    "shape_result",
    "truncation_text",
    "ENCODED_RESULT",
]
