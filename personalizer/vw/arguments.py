"""Policy arguments are parsed, not filtered: a typed allow-list of VW learning options.

Why parse: VW joins and re-splits its arguments (and re-applies the options stored in
a model's header), so a value that hides a second option (``--interactions "@@ -f x"``)
would be obeyed. Every token here is checked against what its option takes: a name on
the allow-list, then a value of the right type and range. No token may contain
whitespace, quotes, backslashes or control characters, so the canonical token list
joined by spaces re-splits into exactly the same tokens. Ranges are those known to
work: some in-range-looking values crash VW (``--bag 0`` segfaults), freeze it
(``--nn 5000000``: 9 s per rank) or block (``-b 30``: 7 s to build).

Anything else raises ``PersonalizerError("InvalidPolicyConfiguration", ...)`` naming
the offending token. The same parser checks a new policy, an evaluation's candidate
policies and the options stored in an imported model's header (``mode="header"``,
which also admits the options VW itself writes there).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..contract import PersonalizerError
from .encoding import ACTION_NAMESPACE, CONTEXT_NAMESPACE, SLOT_NAMESPACE

#: Namespace characters the encoder writes, and ``:`` (VW's wildcard: any namespace).
NAMESPACE_CHARACTERS = CONTEXT_NAMESPACE + ACTION_NAMESPACE + SLOT_NAMESPACE + ":"
#: Longest policy argument string accepted (the contract's limit, checked again here).
MAX_ARGUMENTS_LENGTH = 1024
#: Most interaction terms (-q, --cubic, --interactions) in one policy.
MAX_INTERACTIONS = 8

_INT = re.compile(r"[0-9]{1,20}")
_FLOAT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")
_FORBIDDEN = re.compile(r"[\s\"'\\`\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Option:
    """One allowed option: its canonical long name and how to check its value (None: a flag)."""

    name: str
    check: Callable[[str, str], str] | None = None
    repeatable: bool = False
    header_only: bool = False


def _refuse(message: str) -> PersonalizerError:
    return PersonalizerError("InvalidPolicyConfiguration", message, 400)


def _int(lo: int, hi: int) -> Callable[[str, str], str]:
    def check(option: str, value: str) -> str:
        if not _INT.fullmatch(value) or not lo <= int(value) <= hi:
            raise _refuse(f"policy option '{option}' needs an integer in {lo}..{hi}, got '{value}'")
        return str(int(value))
    return check


def _float(lo: float, hi: float, *, open_low: bool = False) -> Callable[[str, str], str]:
    def check(option: str, value: str) -> str:
        number = float(value) if _FLOAT.fullmatch(value) else math.nan
        low_ok = number > lo if open_low else number >= lo
        if not (math.isfinite(number) and low_ok and number <= hi):
            bound = f"({lo}, {hi}]" if open_low else f"[{lo}, {hi}]"
            raise _refuse(f"policy option '{option}' needs a number in {bound}, got '{value}'")
        return value
    return check


def _namespaces(lo: int, hi: int, characters: str = NAMESPACE_CHARACTERS) -> Callable[[str, str], str]:
    def check(option: str, value: str) -> str:
        if not lo <= len(value) <= hi or any(c not in characters for c in value):
            size = str(lo) if lo == hi else f"{lo}..{hi}"
            raise _refuse(f"policy option '{option}' needs {size} namespace characters from '{characters}', "
                          f"got '{value}'")
        return value
    return check


def _choice(*choices: str) -> Callable[[str, str], str]:
    def check(option: str, value: str) -> str:
        if value not in choices:
            raise _refuse(f"policy option '{option}' needs one of {', '.join(choices)}, got '{value}'")
        return value
    return check


_OPTIONS: list[tuple[tuple[str, ...], Option]] = [
    (("--ccb_explore_adf",), Option("--ccb_explore_adf")),
    (("--epsilon",), Option("--epsilon", _float(0.0, 1.0))),
    (("--power_t",), Option("--power_t", _float(0.0, 1.0))),
    (("-l", "--learning_rate"), Option("--learning_rate", _float(0.0, 100.0, open_low=True))),
    (("--cb_type",), Option("--cb_type", _choice("ips", "dr", "dm", "mtr", "sm"))),
    (("-q", "--quadratic"), Option("--quadratic", _namespaces(2, 2), repeatable=True)),
    (("--cubic",), Option("--cubic", _namespaces(3, 3), repeatable=True)),
    (("--interactions",), Option("--interactions", _namespaces(2, 3), repeatable=True)),
    (("-b", "--bit_precision"), Option("--bit_precision", _int(10, 24))),
    (("--l1",), Option("--l1", _float(0.0, 1.0))),
    (("--l2",), Option("--l2", _float(0.0, 1.0))),
    (("--initial_t",), Option("--initial_t", _float(0.0, 1e6))),
    (("--decay_learning_rate",), Option("--decay_learning_rate", _float(0.0, 1.0, open_low=True))),
    (("--ignore",), Option("--ignore", _namespaces(1, 3, NAMESPACE_CHARACTERS[:3]), repeatable=True)),
    (("--ignore_linear",), Option("--ignore_linear", _namespaces(1, 3, NAMESPACE_CHARACTERS[:3]), repeatable=True)),
    (("--keep",), Option("--keep", _namespaces(1, 3, NAMESPACE_CHARACTERS[:3]), repeatable=True)),
    (("--noconstant",), Option("--noconstant")),
    (("--first",), Option("--first", _int(1, 100_000))),
    (("--bag",), Option("--bag", _int(2, 16))),
    (("--cover",), Option("--cover", _int(1, 16))),
    (("--squarecb",), Option("--squarecb")),
    (("--gamma_scale",), Option("--gamma_scale", _float(0.0, 10_000.0))),
    (("--gamma_exponent",), Option("--gamma_exponent", _float(0.0, 1.0))),
    (("--softmax",), Option("--softmax")),
    (("--lambda",), Option("--lambda", _float(-1000.0, 1000.0))),
    (("--synthcover",), Option("--synthcover")),
    (("--regcb",), Option("--regcb")),
    (("--regcbopt",), Option("--regcbopt")),
    (("--rnd",), Option("--rnd", _int(1, 16))),
    (("--adaptive",), Option("--adaptive")),
    (("--normalized",), Option("--normalized")),
    (("--invariant",), Option("--invariant")),
    (("--sgd",), Option("--sgd")),
    (("--nn",), Option("--nn", _int(1, 64))),
    (("--leave_duplicate_interactions",), Option("--leave_duplicate_interactions")),
    (("--hash_seed",), Option("--hash_seed", _int(0, 2**31 - 1))),
    (("--loss_function",), Option("--loss_function", _choice("squared", "logistic", "hinge", "quantile"))),
    (("--coin",), Option("--coin")),
    (("--ftrl",), Option("--ftrl")),
    (("--pistol",), Option("--pistol")),
    (("--freegrad",), Option("--freegrad")),
    (("--all_slots_loss",), Option("--all_slots_loss")),
    (("--epsilon_decay",), Option("--epsilon_decay")),
    # Written by VW itself into a model's header (the reductions CCB stacks, its random state).
    (("--cb_adf",), Option("--cb_adf", header_only=True)),
    (("--cb_explore_adf",), Option("--cb_explore_adf", header_only=True)),
    (("--cb_sample",), Option("--cb_sample", header_only=True)),
    (("--csoaa_ldf",), Option("--csoaa_ldf", _choice("multiline", "m"), header_only=True)),
    (("--csoaa_rank",), Option("--csoaa_rank", header_only=True)),
    (("--no_predict",), Option("--no_predict", header_only=True)),
    (("--random_seed",), Option("--random_seed", _int(0, 2**64 - 1), header_only=True)),
]
_ALIASES: dict[str, Option] = {alias: option for aliases, option in _OPTIONS for alias in aliases}
_INTERACTION_OPTIONS = {"--quadratic", "--cubic", "--interactions"}
_REFUSED_HINT = "learning options only; file, daemon and data options (-i, -f, -d, --daemon, ...) are not allowed"


def parse_arguments(arguments: str | Sequence[str], *, mode: str = "policy") -> list[str]:
    """Parse VW policy arguments into a canonical token list; raise InvalidPolicyConfiguration if any is unsafe.

    ``arguments`` is the policy's text (split on whitespace) or a token list. ``mode``
    ``"header"`` also admits the options VW writes into a model's header. The result
    keeps each option as it was spelled (``-l`` stays ``-l``), ``--name=value`` split in two.
    """
    if isinstance(arguments, str):
        if len(arguments) > MAX_ARGUMENTS_LENGTH and mode == "policy":
            raise _refuse(f"policy arguments are longer than {MAX_ARGUMENTS_LENGTH} characters")
        raw = arguments.split()
    else:
        raw = list(arguments)
    out: list[str] = []
    seen: dict[str, str] = {}
    interactions = 0
    i = 0
    while i < len(raw):
        token = raw[i]
        _check_characters(token)
        name, eq, value = token.partition("=") if token.startswith("--") else (token, "", "")
        option = _ALIASES.get(name)
        if option is None or (option.header_only and mode != "header"):
            shown = name if name.startswith("-") else token
            what = "is not an option" if not name.startswith("-") else "is not allowed"
            raise _refuse(f"policy option '{shown}' {what}; {_REFUSED_HINT}")
        if option.check is None:
            if eq:
                raise _refuse(f"policy option '{name}' takes no value, got '{token}'")
            out.append(name)
        else:
            if not eq:
                if i + 1 >= len(raw):
                    raise _refuse(f"policy option '{name}' needs a value")
                i += 1
                value = raw[i]
                _check_characters(value)
            if value.startswith("-") and not _FLOAT.fullmatch(value):
                raise _refuse(f"policy option '{name}' needs a value, got the option '{value}'")
            out.extend([name, option.check(name, value)])
        if option.name in seen and not option.repeatable and mode != "header":
            raise _refuse(f"policy option '{name}' is given twice")
        seen[option.name] = name
        if option.name in _INTERACTION_OPTIONS:
            interactions += 1
            if interactions > MAX_INTERACTIONS:
                raise _refuse(f"at most {MAX_INTERACTIONS} interaction terms (-q, --cubic, --interactions) "
                              f"are allowed; '{name} {value}' is one too many")
        i += 1
    if "--ccb_explore_adf" not in seen:
        raise _refuse("multi-slot policies need --ccb_explore_adf (conditional contextual bandits)")
    return out


def _check_characters(token: str) -> None:
    """No whitespace, quotes, backslashes or control characters: joined tokens re-split the same."""
    bad = _FORBIDDEN.search(token)
    if bad is not None or not token:
        shown = token.encode("unicode_escape").decode("ascii")
        raise _refuse(f"policy token '{shown}' contains a character that is not allowed "
                      f"({bad.group()!r}); quotes, backslashes, whitespace and control characters never are"
                      if bad is not None else "empty policy token")


def option_value(tokens: Sequence[str], name: str) -> str | None:
    """The value of option ``name`` (any spelling) in a parsed token list, or None."""
    canonical = _ALIASES[name].name
    for k, token in enumerate(tokens[:-1]):
        option = _ALIASES.get(token)
        if option is not None and option.name == canonical and option.check is not None:
            return tokens[k + 1]
    return None


def effective_arguments(arguments: str, exploration: float) -> str:
    """Policy arguments, parsed, with ``--epsilon`` rewritten to the configured exploration percentage."""
    tokens = parse_arguments(arguments)
    out: list[str] = []
    skip = False
    for token in tokens:
        if skip:
            skip = False
            continue
        if token == "--epsilon":
            skip = True
            continue
        out.append(token)
    out.extend(["--epsilon", _float(0.0, 1.0)("explorationPercentage", repr(float(exploration)))])
    return " ".join(out)
