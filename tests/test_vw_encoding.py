"""personalizer.vw.encoding: the encoding rules, that no name can break or inject into a line, the bounded caches."""

from __future__ import annotations

import urllib.parse

from hypothesis import given
from hypothesis import strategies as st

from personalizer.vw import encoding, workspace


def test_seed_context_and_action_encoding() -> None:
    assert encoding.shared_line([{"time": "morning"}, {"device": "mobile"}]) == \
        "ccb shared |@ time=morning device=mobile"
    line = encoding.action_line("XBox-Series X-117", [{"onSale": "false", "price": 499, "category": "Electronics"}])
    assert line == "ccb action |_ _id=XBox-Series%20X-117 category=Electronics onSale=false price:499"
    # Key order never changes the example.
    assert encoding.shared_line([{"b": 1, "a": "x"}]) == encoding.shared_line([{"a": "x", "b": 1}])


def test_slot_line_carries_the_seed_tag() -> None:
    body = encoding.slot_body("Big Hero", [{"size": "large"}], "ev|1")
    assert body == "'seed=ev%7C1|~ _id=Big%20Hero size=large"
    assert encoding.slot_line(body, [0, 2], "2:-1.0:0.5") == "ccb slot 2:-1.0:0.5 0,2 " + body


def test_types_nested_arrays_null_bool_and_ignored_keys() -> None:
    text = encoding.shared_line([{"user": {"age": 31, "tier": "gold", "geo": {"city": "Oslo"}},
                                  "emb": [0.5, -1], "vip": True, "gone": None, "_label": "x"}])
    assert text == "ccb shared |@ emb[0]:0.5 emb[1]:-1 user.age:31 user.geo.city=Oslo user.tier=gold vip=true"


def test_empty_context_still_parses() -> None:
    vw = workspace.build("--ccb_explore_adf")
    lines = encoding.example([], [("a", [{"x": 1}])], [("s", [], [0])], seed="e1")
    assert lines[0] == "ccb shared |@"
    assert workspace.predict(vw, lines) == [[(0, 1.0)]]


def test_json_nesting_never_makes_a_namespace() -> None:
    text = encoding.shared_line([{"~slot": {"a": "x"}, "_hidden": {"b": 1}, "@me": {"c": "y"}}])
    assert text == "ccb shared |@ @me.c=y ~slot.a=x"
    assert encoding.action_line("a", [{"_id": "spoof", "x": {"_id": "also"}}]) == "ccb action |_ _id=a"


# No lone surrogates: the contract refuses them (they cannot be UTF-8 encoded), so the encoder never sees one.
SPECIAL = st.text(alphabet=st.sampled_from(list("ab|: \t\n\r'%~_@=\x00\x0b"))
                  | st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20)


@given(name=SPECIAL, value=SPECIAL)
def test_no_name_or_value_can_break_the_line(name: str, value: str) -> None:
    if name.startswith("_"):
        return
    text = encoding.namespaces([{name: value}], "@")
    # One namespace, one feature: exactly one bar and one space, no line breaks.
    assert text.count("|") == 1 and text.count(" ") == 1
    assert "\n" not in text and "\r" not in text and ":" not in text
    key, _, val = text.split(" ")[1].partition("=")
    assert urllib.parse.unquote(key) == name and urllib.parse.unquote(val) == value


@given(action_id=SPECIAL, slot_id=SPECIAL, event_id=SPECIAL, namespace=SPECIAL)
def test_ids_with_any_character_make_a_parseable_example(action_id: str, slot_id: str, event_id: str,
                                                         namespace: str) -> None:
    lines = encoding.example([{namespace: {"k": "v"}}], [(action_id, [{"f": 1}]), ("other", [{"f": 2}])],
                             [(slot_id, [{"size": "s"}], [0, 1])], seed=event_id)
    assert len(lines) == 4 and all("\n" not in line for line in lines)
    prediction = workspace.predict(_VW, lines)
    assert sorted(a for a, _ in prediction[0]) == [0, 1]


_VW = workspace.build("--ccb_explore_adf -q ::")
