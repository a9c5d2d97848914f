"""Builtin plugin: the original MXCP's CEL policies, evaluated, and failing closed.

An endpoint's `policies:` hold `input` rules (seeing every argument, after conversion and defaults, and `user`),
`output` rules (seeing `user` and `response`), and who may see the endpoint at all (`required_scopes`,
`visible_when`). Every condition is compiled once, when the project loads (`check_endpoint`): one that does not
compile makes the endpoint invalid, so `validate` names it and `serve` refuses to start. At call time a condition
that cannot be evaluated denies the call (the original treats it as false, which lets a `deny` rule's call through).

The conditions are CEL, evaluated by Google's C++ implementation (`cel-expr-python`, the `cel` extra). Without it,
an endpoint with policies is invalid with a message naming the extra: never served as if it had none. Another
engine can replace this plugin (`disable_plugins: [policies]` and a plugin declaring the `policies` section);
with no plugin declaring it, endpoints with policies are invalid.
"""
from __future__ import annotations

import datetime
import decimal
import functools
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from mxcp_core import (
    ConfigSection,
    EndpointDefinition,
    ExecutionError,
    Problem,
    UserContext,
    hookimpl,
    line_of,
    mask,
    suggest,
    tracing,
)

log = logging.getLogger(__name__)

CEL_EXTRA = "mxcp-pluggy[cel]"
MASK = "****"
INPUT_ACTIONS = ("deny", "warn")
OUTPUT_ACTIONS = ("deny", "warn", "filter_fields", "mask_fields", "filter_sensitive_fields")
POLICY_KEYS = ("input", "output", "required_scopes", "visible_when")
RULE_KEYS = ("condition", "action", "reason", "fields")
STATE_KEY = "policies"


class PolicyDenied(ExecutionError):
    """A policy denied the call (or could not be evaluated, which denies it too)."""


class ConditionError(Exception):
    """A condition that does not compile, or could not be evaluated."""


# -- the condition engine ------------------------------------------------------------------------------------


class CelEngine:
    """CEL conditions: compiled (and type-checked) once, evaluated per call in microseconds."""

    def __init__(self) -> None:
        try:
            from cel_expr_python import cel
        except ImportError:
            raise ConditionError(f"policies need a CEL evaluator, which is not installed: pip install '{CEL_EXTRA}'"
                                 ) from None
        self._cel = cel

    def compile(self, text: str, variables: Mapping[str, str], *, boolean: bool = True) -> Any:
        """`variables`: name → "string", "bool", "map" or "dyn". Undeclared names are compile errors."""
        cel = self._cel
        kinds = {"string": cel.Type.STRING, "bool": cel.Type.BOOL, "dyn": cel.Type.DYN,
                 "map": cel.Type.Map(cel.Type.STRING, cel.Type.DYN)}
        env = cel.NewEnv(variables={name: kinds[kind] for name, kind in variables.items()})
        try:
            program = env.compile(text)
        except Exception as exc:  # noqa: BLE001 - the library raises RuntimeError with CEL's own message
            raise ConditionError(_cel_message(exc)) from None
        returns = program.return_type().name()
        if boolean and returns not in ("BOOL", "DYN"):
            raise ConditionError(f"the condition gives {returns.lower()}, not true or false")
        return program

    def compile_all(self, texts: Sequence[str], variables: Mapping[str, str]) -> Any:
        """One program giving the list of every condition's value: a stage costs one evaluation, not one each."""
        return self.compile("[" + ", ".join(f"({text})" for text in texts) + "]", variables, boolean=False)

    def evaluate_all(self, program: Any, data: Mapping[str, Any]) -> list[Any] | None:
        """Each condition's value (True/False, or something else when not boolean); None when any errs."""
        try:
            value = program.eval(data=data)
        except Exception:  # noqa: BLE001 - the caller evaluates the conditions one by one to say which
            return None
        if value.type().name() == "ERROR":
            return None
        return value.plain_value()

    def evaluate(self, program: Any, data: Mapping[str, Any]) -> bool:
        try:
            value = program.eval(data=data)
        except Exception as exc:  # noqa: BLE001
            raise ConditionError(_cel_message(exc)) from None
        kind = value.type().name()
        if kind == "BOOL":
            return bool(value.value())
        if kind == "ERROR":
            raise ConditionError(_cel_message(value.value()))
        raise ConditionError(f"the condition gave {kind.lower()}, not true or false")


def _cel_message(error: Any) -> str:
    """CEL's message without its status prefix and echo of the source: `1:13: Syntax error: ...`."""
    text = str(error).strip()
    for prefix in ("INVALID_ARGUMENT: ", "UNKNOWN: ", "NOT_FOUND: ", "ERROR: ", "<input>:"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text.split("\n", 1)[0].replace(" (in container '')", "").strip()


@functools.cache  # one engine per process; a missing evaluator raises, and is looked for again next time
def engine() -> CelEngine:
    return CelEngine()


# -- compiled policies ---------------------------------------------------------------------------------------


@attrs.frozen(eq=False)  # identity: rules key the values of one call, hashed many times
class Rule:
    stage: str  # input | output | visibility
    number: int  # 1-based, as messages show it
    condition: str
    action: str
    reason: str | None
    fields: tuple[str, ...]
    program: Any = attrs.field(eq=False, repr=False)

    def describe(self) -> str:
        return f"{self.stage} policy {self.number}"


@attrs.frozen
class Evaluation:
    """Several rules' conditions computed by one CEL program from one set of variables: one evaluation per call
    instead of one per rule, and only the arguments and `user` fields the conditions name handed over (converting
    values to CEL costs more than evaluating them)."""

    rules: tuple[Rule, ...]
    program: Any = attrs.field(eq=False, repr=False)  # None: evaluate each rule's own program
    arguments: frozenset[str] = frozenset()
    user_fields: frozenset[str] | None = None  # None: all of them (`user` used other than as `user.<field>`)
    response: bool = False
    # Conditions on the caller alone (roles, scopes) give the same answer for every call of that caller: CEL is
    # deterministic, so their values are kept per caller (bounded), and most calls evaluate nothing for them.
    memo: dict[tuple[Any, ...], dict[Rule, Any]] | None = attrs.field(default=None, eq=False, repr=False)

    def values(self, arguments: Mapping[str, Any], user: UserContext, response: Any) -> dict[Rule, Any]:
        """Each rule's value: True/False, a ConditionError, or whatever non-boolean the condition gave."""
        if self.memo is None:
            return self._evaluate(arguments, user, response)
        key = tuple(getattr(user, name) for name in self.user_fields or () if name in USER_FIELDS)
        found = self.memo.get(key)
        if found is None:
            if len(self.memo) >= MEMO_SIZE:
                self.memo.clear()
            found = self.memo[key] = self._evaluate(arguments, user, response)
        return found

    def _evaluate(self, arguments: Mapping[str, Any], user: UserContext, response: Any) -> dict[Rule, Any]:
        data: dict[str, Any] = {name: cel_value(arguments[name]) for name in self.arguments if name in arguments}
        data["user"] = user_data(user, self.user_fields)
        if self.response:
            data["response"] = cel_value(response)
        found = engine().evaluate_all(self.program, data) if self.program is not None else None
        if found is None:  # one failed (or no combined program): each on its own, to say which and why
            found = [_alone(rule, data) for rule in self.rules]
        return dict(zip(self.rules, found))


# What `user` holds in a condition (`UserContext.policy_view()`); the list-valued ones are tuples on the record.
USER_FIELDS = frozenset(UserContext.anonymous().policy_view())
_LISTS = frozenset({"permissions", "capabilities", "scopes"})


def user_data(user: UserContext, fields: frozenset[str] | None = None) -> dict[str, Any]:
    """`user` for CEL: the named fields (all when None); claims made CEL values (YAML may hold dates)."""
    names = USER_FIELDS if fields is None else fields & USER_FIELDS
    return {name: _user_field(user, name) for name in names}


def _user_field(user: UserContext, name: str) -> Any:
    value = getattr(user, name)
    if name in _LISTS:
        return list(value)
    return cel_value(value) if name == "claims" else value


def _alone(rule: Rule, data: Mapping[str, Any]) -> Any:
    try:
        return engine().evaluate(rule.program, data)
    except ConditionError as exc:
        return exc


def _mentions(rule: Rule, names: set[str]) -> bool:
    return not names.isdisjoint(_IDENTIFIER.findall(rule.condition))


def plan(rules: Sequence[Rule], parameters: Sequence[str], variables: Mapping[str, str],
         cel: CelEngine, *, response: bool = False) -> Evaluation | None:
    """How to evaluate `rules` together. What they need is read off their text, erring on the side of too much:
    every identifier anywhere in a condition (in a string or a comment too) counts as a mention, and any use of
    `user` other than `user.<field>` hands over the whole record. Too much costs a little time; too little would
    make a condition fail (deny) or, through `has()`, answer differently."""
    if not rules:
        return None
    texts = [rule.condition for rule in rules]
    mentioned = set(_IDENTIFIER.findall(" ".join(texts)))
    fields: set[str] | None = set()
    for text in texts:
        if len(_USER_ANY.findall(text)) != len(_USER_FIELD.findall(text)):
            fields = None
            break
        fields |= set(_USER_FIELD.findall(text))
    try:
        program = cel.compile_all(texts, variables)
    except ConditionError:  # each compiled on its own already: evaluate them one by one
        program = None
    arguments = frozenset(mentioned & set(parameters))
    on_user_alone = not arguments and not response and fields is not None and "claims" not in fields
    return Evaluation(tuple(rules), program, arguments, None if fields is None else frozenset(fields),
                      response, {} if on_user_alone else None)


MEMO_SIZE = 4096  # callers remembered per group of conditions


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# `user` as a name (also `.user`, CEL's root-qualified form); `user.<field>` where a field is named.
_USER_ANY = re.compile(r"(?<![A-Za-z0-9_])user(?![A-Za-z0-9_])")
_USER_FIELD = re.compile(r"(?<![A-Za-z0-9_])user\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")


@attrs.frozen
class EndpointPolicies:
    input: tuple[Rule, ...] = ()
    output: tuple[Rule, ...] = ()
    required_scopes: tuple[str, ...] = ()
    visible_when: Rule | None = None
    # Input conditions and the output conditions that do not look at the response are evaluated before the call
    # (those on the caller alone apart, remembered per caller); those on the response after it.
    before: tuple[Evaluation, ...] = ()
    after: Evaluation | None = None

    @property
    def hides(self) -> bool:
        return bool(self.required_scopes) or self.visible_when is not None


def compile_policies(definition: EndpointDefinition) -> EndpointPolicies:
    """Parse and compile an endpoint's `policies:`; a ConditionError names the policy, its line and what is wrong."""
    policies = definition.policies
    if not isinstance(policies, Mapping):
        raise ConditionError("policies: expected a mapping with input: and output:")
    for key in policies:
        if key not in POLICY_KEYS:
            raise ConditionError(f"policies.{key} (line {line_of(policies, key)}): unknown key"
                                 f"{suggest(str(key), POLICY_KEYS)}")
    parameters = {p.name: _variable_kind(p) for p in definition.parameters}
    if "user" in parameters and (policies.get("input") or policies.get("visible_when")):
        raise ConditionError("policies: a parameter named 'user' would hide the caller from input policies; "
                             "rename the parameter")
    cel = engine()
    input_variables = {**parameters, "user": "map"}
    input_rules = _rules(policies, "input", INPUT_ACTIONS, input_variables, cel)
    output_rules = _rules(policies, "output", OUTPUT_ACTIONS, {"user": "map", "response": "dyn"}, cel)
    early = [*input_rules, *(r for r in output_rules if not _mentions(r, {"response"}))]
    on_user = [r for r in early if not _mentions(r, set(parameters))]
    before = tuple(p for p in (plan(on_user, [], input_variables, cel),
                               plan([r for r in early if r not in on_user], list(parameters), input_variables, cel))
                   if p is not None)
    after = plan([r for r in output_rules if _mentions(r, {"response"})], [],
                 {"user": "map", "response": "dyn"}, cel, response=True)
    scopes = policies.get("required_scopes") or []
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise ConditionError(f"policies.required_scopes (line {line_of(policies, 'required_scopes')}): "
                             "expected a list of strings")
    visible_when = None
    text = policies.get("visible_when")
    if text is not None:
        where = f"policies.visible_when (line {line_of(policies, 'visible_when')})"
        if not isinstance(text, str) or not text.strip():
            raise ConditionError(f"{where}: expected a CEL condition on `user`")
        try:
            program = cel.compile(text, {"user": "map"})
        except ConditionError as exc:
            raise ConditionError(f"{where}: condition does not compile: {exc}") from None
        visible_when = Rule("visibility", 1, text, "hide", None, (), program)
    return EndpointPolicies(input_rules, output_rules, tuple(scopes), visible_when, before, after)


def _rules(policies: Mapping[str, Any], stage: str, actions: Sequence[str], variables: Mapping[str, str],
           cel: CelEngine) -> tuple[Rule, ...]:
    raw = policies.get(stage) or []
    if not isinstance(raw, list):
        raise ConditionError(f"policies.{stage} (line {line_of(policies, stage)}): expected a list of policies")
    rules = []
    for index, item in enumerate(raw):
        where = f"{stage} policy {index + 1} (line {line_of(raw, index)}, policies.{stage}[{index}])"
        if not isinstance(item, Mapping):
            raise ConditionError(f"{where}: expected a mapping with condition: and action:")
        for key in item:
            if key not in RULE_KEYS:
                raise ConditionError(f"{where}: unknown key '{key}'{suggest(str(key), RULE_KEYS)}")
        condition, action = item.get("condition"), item.get("action")
        if not isinstance(condition, str) or not condition.strip():
            raise ConditionError(f"{where}: condition: expected a CEL expression")
        if action not in actions:
            hint = " (field actions apply to output policies)" if action in OUTPUT_ACTIONS else ""
            raise ConditionError(f"{where}: action: expected one of {', '.join(actions)}, got {action!r}{hint}")
        fields = item.get("fields")
        if action in ("filter_fields", "mask_fields"):
            if not fields or not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
                raise ConditionError(f"{where}: {action} needs fields: a list of field names")
        elif fields is not None:
            raise ConditionError(f"{where}: fields: only filter_fields and mask_fields take fields")
        reason = item.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise ConditionError(f"{where}: reason: expected a string")
        try:
            program = cel.compile(condition, variables)
        except ConditionError as exc:
            raise ConditionError(f"{where}: condition does not compile: {exc}") from None
        rules.append(Rule(stage, index + 1, condition, action, reason, tuple(fields or ()), program))
    return tuple(rules)


def _variable_kind(parameter: Any) -> str:
    """How an argument is declared to CEL: typed where its value is sure to have the type (type errors then show
    when the project loads), `dyn` where it may be null or a number (CEL compares int and double only as dyn)."""
    spec = parameter.type
    certain = parameter.required or (parameter.has_default and spec.default is not None)
    if not certain:
        return "dyn"
    if spec.type == "string":
        return "string"
    if spec.type == "boolean":
        return "bool"
    return "dyn"


def declared(definition: EndpointDefinition) -> bool:
    policies = definition.policies
    return bool(policies) and isinstance(policies, Mapping)


def policies_for(project: Any, definition: EndpointDefinition) -> EndpointPolicies | None:
    """The endpoint's compiled policies (compiled when the project loaded), None when it declares none.

    Raises ConditionError when they do not compile: the caller denies."""
    if not declared(definition):
        return None
    cache = project.state.setdefault(STATE_KEY, {})
    found = cache.get((definition.kind, definition.key))
    if found is not None and found[0] is definition:
        if isinstance(found[1], ConditionError):
            raise found[1]
        return found[1]
    try:
        compiled: EndpointPolicies | ConditionError = compile_policies(definition)
    except ConditionError as exc:
        compiled = exc
    cache[(definition.kind, definition.key)] = (definition, compiled)
    if isinstance(compiled, ConditionError):
        raise compiled
    return compiled


# -- evaluation ----------------------------------------------------------------------------------------------


def cel_value(value: Any) -> Any:
    """A Python value as CEL takes it: dates and times as ISO text, decimals as doubles, tuples as lists."""
    if value is None or isinstance(value, (str, bool, int, float, bytes)):
        return value
    if isinstance(value, Mapping):
        return {str(k): cel_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [cel_value(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return str(value)


class Decision:
    """What the rules of one call decided, for the audit record (`call.notes`) and the client's message."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.evaluated: list[dict[str, Any]] = call.notes.setdefault("policies_evaluated", [])
        self.warned: list[str] = []

    def run(self, rules: Sequence[Rule], values: Mapping[Rule, Any], result: Any) -> Any:
        """Apply the rules in order; the first deny (or condition that could not be evaluated) stops the call."""
        for rule in rules:
            value = values[rule]
            if not isinstance(value, bool):
                detail = mask(str(value) if isinstance(value, ConditionError) else
                              f"the condition gave {type(value).__name__}, not true or false", self.call)
                self.evaluated.append({"stage": rule.stage, "policy": rule.number, "action": rule.action,
                                       "result": "error", "error": detail})
                self.deny(rule, f"{rule.describe()} could not be evaluated ({detail})",
                          "its condition could not be evaluated")
            self.evaluated.append({"stage": rule.stage, "policy": rule.number, "action": rule.action,
                                   "result": "matched" if value else "not matched"})
            if value:
                result = self.apply(rule, result)
        return result

    def deny(self, rule: Rule, recorded: str, shown: str) -> None:
        endpoint = self.call.endpoint
        self.call.notes["policy_decision"] = "deny"
        self.call.notes["policy_reason"] = recorded
        log.info("%s '%s' denied by %s: %s", endpoint.kind, endpoint.key, rule.describe(), recorded)
        raise PolicyDenied(f"denied by {rule.describe()} of {endpoint.kind} '{endpoint.key}': {shown}")

    def apply(self, rule: Rule, result: Any) -> Any:
        if rule.action == "deny":
            reason = rule.reason or "access denied"
            self.deny(rule, reason, reason)
        if rule.action == "warn":
            self.warned.append(rule.reason or f"{rule.describe()} matched")
            log.warning("%s '%s': %s", self.call.endpoint.kind, self.call.endpoint.key, self.warned[-1])
            return result
        if rule.action == "filter_fields":
            return _each_row(result, lambda row: {k: v for k, v in row.items() if k not in rule.fields})
        if rule.action == "mask_fields":
            return _each_row(result, lambda row: {k: (MASK if k in rule.fields else v) for k, v in row.items()})
        if rule.action == "filter_sensitive_fields":
            return self.call.compiled.returns.without_sensitive(result)
        return result

    def outcome(self) -> str:
        """What the rules decided so far: deny, warn or allow (a stage's span records it)."""
        return "deny" if self.call.notes.get("policy_decision") == "deny" else "warn" if self.warned else "allow"

    def settle(self) -> None:
        notes = self.call.notes
        if notes.get("policy_decision") == "deny":
            return
        notes["policy_decision"] = "warn" if self.warned else "allow"
        notes["policy_reason"] = "; ".join(self.warned) if self.warned else None


def _each_row(result: Any, change: Any) -> Any:
    """Field actions act on an object result, or on each object of an array result."""
    if isinstance(result, Mapping):
        return change(result)
    if isinstance(result, list):
        return [change(row) if isinstance(row, Mapping) else row for row in result]
    return result


# -- hooks ---------------------------------------------------------------------------------------------------


@hookimpl
def config_sections():
    # The endpoint key this plugin gives meaning to: without a plugin declaring it, such endpoints are refused.
    return [ConfigSection("policies", dict[str, Any], scope="endpoint",
                          description="input and output policies, and who may see the endpoint")]


@hookimpl
def check_endpoint(endpoint, project):
    try:
        policies_for(project, endpoint)
    except ConditionError as exc:
        return [Problem(message=str(exc))]
    return None


@hookimpl
def endpoint_visible(endpoint, user, project):
    if not declared(endpoint):
        return None
    try:
        compiled = policies_for(project, endpoint)
    except ConditionError:
        return False  # fail closed: an endpoint whose policies do not compile is shown to no one
    if compiled is None or not compiled.hides:
        return None
    if compiled.required_scopes and not set(compiled.required_scopes) <= set(user.scopes):
        return False
    if compiled.visible_when is not None:
        try:
            return engine().evaluate(compiled.visible_when.program, {"user": user_data(user)})
        except ConditionError as exc:
            log.warning("%s '%s': visible_when could not be evaluated (%s): hidden", endpoint.kind, endpoint.key,
                        exc)
            return False
    return True


@hookimpl(wrapper=True)
def call_endpoint(call: Any) -> Any:
    if not declared(call.endpoint):
        return (yield)
    try:
        compiled = policies_for(call.runtime.context, call.endpoint)
    except ConditionError as exc:
        call.notes["policy_decision"] = "deny"
        call.notes["policy_reason"] = str(exc)
        raise PolicyDenied(f"{call.endpoint.kind} '{call.endpoint.key}' is refused: its policies are invalid "
                           f"({exc})") from None
    if compiled is None or not (compiled.input or compiled.output):
        return (yield)
    decision = Decision(call)
    user = call.user
    values: dict[Rule, Any] = {}
    with tracing.span("mxcp.policy input", {"mxcp.policy.stage": "input",
                                            "mxcp.policy.rules": len(compiled.input)}) as span:
        try:
            for evaluation in compiled.before:
                values.update(evaluation.values(call.arguments, user, None))
            decision.run(compiled.input, values, None)
        finally:
            span.set_attribute("mxcp.policy.decision", decision.outcome())
    result = yield
    if compiled.output:
        with tracing.span("mxcp.policy output", {"mxcp.policy.stage": "output",
                                                 "mxcp.policy.rules": len(compiled.output)}) as span:
            try:
                if compiled.after is not None:
                    # Conditions see the response as the endpoint returned it: what one action removed stays
                    # visible to the next condition (a deny on `response.salary` still works after salary was
                    # filtered for this user).
                    values.update(compiled.after.values({}, user, result))
                result = decision.run(compiled.output, values, result)
            finally:
                span.set_attribute("mxcp.policy.decision", decision.outcome())
    decision.settle()
    return result
