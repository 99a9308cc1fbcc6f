"""JSON features -> VW lines: the encoding rules and that no name can break or inject into a line."""

from __future__ import annotations

import re
import urllib.parse

from hypothesis import given
from hypothesis import strategies as st
from vowpalwabbit import Workspace

from personalizer import features


def test_seed_context_and_action_encoding() -> None:
    assert features.shared_line([{"time": "morning"}, {"device": "mobile"}]) == \
        "ccb shared |time time=morning |device device=mobile"
    line = features.action_line("XBox-Series X-117", [{"onSale": "false", "price": 499, "category": "Electronics"}])
    assert line == ("ccb action |_ XBox-Series%20X-117 |category category=Electronics |onSale onSale=false"
                    " |price price:499")
    # Key order never changes the example.
    assert features.namespaces([{"b": 1, "a": "x"}]) == features.namespaces([{"a": "x", "b": 1}])


def test_types_nested_arrays_null_bool_and_ignored_keys() -> None:
    text = features.namespaces([{"user": {"age": 31, "tier": "gold", "geo": {"city": "Oslo"}},
                                 "emb": [0.5, -1], "vip": True, "gone": None, "_label": "x"}])
    assert "|user age:31 tier=gold" in text
    assert "|user geo.city=Oslo" in text
    assert "|emb emb[0]:0.5 emb[1]:-1" in text
    assert "|vip vip=true" in text
    assert "gone" not in text and "_label" not in text


def test_empty_context_still_parses() -> None:
    vw = Workspace("--ccb_explore_adf --quiet")
    lines = features.example([], [("a", [{"x": 1}])], [("s", [], [0])], seed="e1")
    assert vw.predict(lines) == [[(0, 1.0)]]


def test_reserved_namespaces_cannot_be_claimed_by_users() -> None:
    text = features.namespaces([{"~slot": "x", "plain": "y"}])
    assert not re.search(r"\|~", text)  # '~' starts only the engine's slot-id namespace


SPECIAL = st.text(alphabet=st.sampled_from(list("ab|: \t\n\r'%~_\x00\x0b")) | st.characters(), min_size=1,
                  max_size=20)


@given(name=SPECIAL, value=SPECIAL)
def test_no_name_or_value_can_break_the_line(name: str, value: str) -> None:
    if name.startswith("_"):
        return
    text = features.namespaces([{name: value}])
    # One namespace, one feature: exactly one bar and one space, no line breaks.
    assert text.count("|") == 1 and text.count(" ") == 1
    assert "\n" not in text and "\r" not in text and ":" not in text
    ns, feat = text[1:].split(" ")
    assert urllib.parse.unquote(ns) == name
    key, _, val = feat.partition("=")
    assert urllib.parse.unquote(key) == name and urllib.parse.unquote(val) == value


@given(action_id=SPECIAL, slot_id=SPECIAL, event_id=SPECIAL)
def test_ids_with_any_character_make_a_parseable_example(action_id: str, slot_id: str, event_id: str) -> None:
    lines = features.example([{"k": "v"}], [(action_id, [{"f": 1}]), ("other", [{"f": 2}])],
                             [(slot_id, [{"size": "s"}], [0, 1])], seed=event_id)
    assert len(lines) == 4 and all("\n" not in line for line in lines)
    prediction = _VW.predict(lines)
    assert sorted(a for a, _ in prediction[0]) == [0, 1]


_VW = Workspace("--ccb_explore_adf --quiet -q ::")
