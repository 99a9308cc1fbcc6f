"""JSON features -> VW lines: the encoding rules and that no name can break or inject into a line."""

from __future__ import annotations

import urllib.parse

from hypothesis import given
from hypothesis import strategies as st
from vowpalwabbit import Workspace

from personalizer import features


def test_seed_context_and_action_encoding() -> None:
    assert features.shared_line([{"time": "morning"}, {"device": "mobile"}]) == \
        "ccb shared |@ time=morning device=mobile"
    line = features.action_line("XBox-Series X-117", [{"onSale": "false", "price": 499, "category": "Electronics"}])
    assert line == "ccb action |_ _id=XBox-Series%20X-117 category=Electronics onSale=false price:499"
    # Key order never changes the example.
    assert features.shared_line([{"b": 1, "a": "x"}]) == features.shared_line([{"a": "x", "b": 1}])


def test_slot_line_carries_the_seed_tag() -> None:
    body = features.slot_body("Big Hero", [{"size": "large"}], "ev|1")
    assert body == "'seed=ev%7C1|~ _id=Big%20Hero size=large"
    assert features.slot_line(body, [0, 2], "2:-1.0:0.5") == "ccb slot 2:-1.0:0.5 0,2 " + body


def test_types_nested_arrays_null_bool_and_ignored_keys() -> None:
    text = features.shared_line([{"user": {"age": 31, "tier": "gold", "geo": {"city": "Oslo"}},
                                  "emb": [0.5, -1], "vip": True, "gone": None, "_label": "x"}])
    assert text == "ccb shared |@ emb[0]:0.5 emb[1]:-1 user.age:31 user.geo.city=Oslo user.tier=gold vip=true"


def test_empty_context_still_parses() -> None:
    vw = Workspace("--ccb_explore_adf --quiet")
    lines = features.example([], [("a", [{"x": 1}])], [("s", [], [0])], seed="e1")
    assert lines[0] == "ccb shared |@"
    assert vw.predict(lines) == [[(0, 1.0)]]


def test_json_nesting_never_makes_a_namespace() -> None:
    text = features.shared_line([{"~slot": {"a": "x"}, "_hidden": {"b": 1}, "@me": {"c": "y"}}])
    assert text == "ccb shared |@ @me.c=y ~slot.a=x"
    assert features.action_line("a", [{"_id": "spoof", "x": {"_id": "also"}}]) == "ccb action |_ _id=a"


SPECIAL = st.text(alphabet=st.sampled_from(list("ab|: \t\n\r'%~_@=\x00\x0b")) | st.characters(), min_size=1,
                  max_size=20)


@given(name=SPECIAL, value=SPECIAL)
def test_no_name_or_value_can_break_the_line(name: str, value: str) -> None:
    if name.startswith("_"):
        return
    text = features.namespaces([{name: value}], "@")
    # One namespace, one feature: exactly one bar and one space, no line breaks.
    assert text.count("|") == 1 and text.count(" ") == 1
    assert "\n" not in text and "\r" not in text and ":" not in text
    key, _, val = text.split(" ")[1].partition("=")
    assert urllib.parse.unquote(key) == name and urllib.parse.unquote(val) == value


@given(action_id=SPECIAL, slot_id=SPECIAL, event_id=SPECIAL, namespace=SPECIAL)
def test_ids_with_any_character_make_a_parseable_example(action_id: str, slot_id: str, event_id: str,
                                                         namespace: str) -> None:
    lines = features.example([{namespace: {"k": "v"}}], [(action_id, [{"f": 1}]), ("other", [{"f": 2}])],
                             [(slot_id, [{"size": "s"}], [0, 1])], seed=event_id)
    assert len(lines) == 4 and all("\n" not in line for line in lines)
    prediction = _VW.predict(lines)
    assert sorted(a for a, _ in prediction[0]) == [0, 1]


_VW = Workspace("--ccb_explore_adf --quiet -q ::")
