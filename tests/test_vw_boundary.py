"""personalizer.vw: the one boundary around Vowpal Wabbit.

Argument parsing (typed allow-list), the model-header reader, the trial child, the
catalog cache's key and the byte-bounded caches. Engine- and server-level attacks
are in test_policy_security.py.
"""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import pytest

from personalizer.contract import PersonalizerError
from personalizer.engine import DEFAULT_POLICY_ARGUMENTS, RETIRED_POLICY_ARGUMENTS
from personalizer.vw import encoding, trial, workspace
from personalizer.vw.arguments import effective_arguments, option_value, parse_arguments

ROOT = Path(__file__).resolve().parent.parent
SEED_LINES = ["ccb shared |@ time=morning device=mobile", "ccb action |_ _id=a x=1", "ccb action |_ _id=b x=2",
              "ccb slot 0:-1.0:0.5 0,1 |~ _id=s1", "ccb slot 1:0.0:0.5 0,1 |~ _id=s2"]


def _refusal(arguments: str, mode: str = "policy") -> str:
    with pytest.raises(PersonalizerError) as err:
        parse_arguments(arguments, mode=mode)
    assert err.value.code == "InvalidPolicyConfiguration" and err.value.status == 400
    return err.value.message


# ---------------------------------------------------------------- the boundary itself

def test_only_the_vw_package_imports_vowpal_wabbit() -> None:
    """No module outside personalizer/vw (nor a bench script) imports vowpalwabbit or pylibvw."""
    offenders = []
    for path in [*ROOT.glob("personalizer/**/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("*.py"),
                 *ROOT.glob("pages/*.py")]:
        if path.parent == ROOT / "personalizer" / "vw":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] in ("vowpalwabbit", "pylibvw") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


# ---------------------------------------------------------------- parsing

def test_the_shipped_policies_parse_to_their_own_tokens() -> None:
    for arguments in (DEFAULT_POLICY_ARGUMENTS, RETIRED_POLICY_ARGUMENTS):
        assert " ".join(parse_arguments(arguments)) == " ".join(arguments.split())
    assert parse_arguments("--ccb_explore_adf --cubic=@@_ --epsilon=0.1") == \
        ["--ccb_explore_adf", "--cubic", "@@_", "--epsilon", "0.1"]
    assert effective_arguments(RETIRED_POLICY_ARGUMENTS, 0.3).endswith("-q :: --epsilon 0.3")
    assert option_value(parse_arguments("--ccb_explore_adf -l 0.5"), "--learning_rate") == "0.5"


@pytest.mark.parametrize(("arguments", "token"), [
    # Finding 1: an interactions value hiding options, re-split by VW.
    ('--ccb_explore_adf --interactions "@@ -f /tmp/x"', '"@@'),
    ("--ccb_explore_adf --interactions @@\t-f", "-f"),
    ("--ccb_explore_adf --interactions=@@,-f", "@@,-f"),
    ("--ccb_explore_adf --readable_model /tmp/r.txt", "--readable_model"),
    ("--ccb_explore_adf -d /etc/shadow", "-d"),
    ("--ccb_explore_adf --daemon --port 18998 --num_children 1", "--daemon"),
    ("--ccb_explore_adf -f model.vw", "-f"),
    ("--ccb_explore_adf --cb_type -f", "-f"),            # a value that is itself an option
    ("--ccb_explore_adf -q @", "@"),                      # wrong length
    ("--ccb_explore_adf -q ab", "ab"),                    # not a namespace the encoder writes
    ("--ccb_explore_adf --cubic @@_x", "@@_x"),
    ("--ccb_explore_adf --epsilon nan", "nan"),
    ("--ccb_explore_adf --epsilon 1e999", "1e999"),
    ("--ccb_explore_adf -l 1_000", "1_000"),
    ("--ccb_explore_adf --epsilon 1.5", "1.5"),
    ("--ccb_explore_adf -l \u0661", "\u0661"),           # a non-ASCII digit
    ("--ccb_explore_adf --noconstant=1", "--noconstant"),
    ("--ccb_explore_adf --epsilon 0.1 --epsilon 0.2", "--epsilon"),
    ("--ccb_explore_adf --cb_adf", "--cb_adf"),           # header-only options are not policy options
    ("--ccb_explore_adf --random_seed 5", "--random_seed"),
    # Finding 3 and 4 (VW half): ranges known to work.
    ("--ccb_explore_adf --bag 0", "--bag"),
    ("--ccb_explore_adf --nn 5000000", "--nn"),
    ("--ccb_explore_adf -b 30", "-b"),
    ("--ccb_explore_adf --bit_precision 99", "--bit_precision"),
    ("--ccb_explore_adf --first 0", "--first"),
    ("--cb_explore_adf -q ::", "--cb_explore_adf"),
])
def test_unsafe_or_out_of_range_tokens_are_refused_by_name(arguments: str, token: str) -> None:
    assert token in _refusal(arguments)


def test_control_characters_and_quotes_are_refused_anywhere() -> None:
    for bad in ("\x00", "\x1b", "'", '"', "\\", "`", "\x7f", "\x9b"):
        assert "not allowed" in _refusal(f"--ccb_explore_adf -q @{bad}")
    assert "'@'" in _refusal("--ccb_explore_adf -q @\x85_")  # NEL splits like a space: '@' alone is too short
    assert "--ccb_explore_adf" in _refusal("-q ::")  # not CCB
    assert "longer than" in _refusal("--ccb_explore_adf " + "--sgd " * 300)


def test_a_canonical_token_list_rejoins_and_resplits_to_itself() -> None:
    tokens = parse_arguments("--ccb_explore_adf  --interactions=@_~ -q :: --lambda -1 --softmax")
    assert " ".join(tokens).split() == tokens
    assert tokens[tokens.index("--lambda") + 1] == "-1"  # a negative number is a value, not an option


# ---------------------------------------------------------------- model headers

def _model(arguments: str = DEFAULT_POLICY_ARGUMENTS) -> bytes:
    vw = workspace.build(arguments)
    workspace.learn(vw, SEED_LINES)
    model = workspace.save(vw)
    workspace.finish(vw)
    return model


def with_header_options(model: bytes, options: str) -> bytes:
    """The same model with other options text in its header (as an attacker would write it)."""
    header = workspace.read_header(model)
    start = header.size - 4  # the checksum follows the options text
    old = model[:start]
    length_at = old.index(b" --") - 4  # the options text starts with " --"
    text = options.encode() + b"\0"
    return model[:length_at] + struct.pack("<I", len(text)) + text + model[start:]


def test_header_options_are_read_and_checked_without_vw() -> None:
    header = workspace.read_header(_model("--ccb_explore_adf --epsilon 0.2 -q @_ -b 16"))
    assert header.version.startswith("9.") and header.bits == 16
    assert "--quadratic" in header.options and "@_" in header.options
    assert workspace.read_header(with_header_options(_model(), " --ccb_explore_adf --cubic @@_")).options


@pytest.mark.parametrize(("options", "named"), [
    (" --ccb_explore_adf --interactions @@ --readable_model /tmp/x", "--readable_model"),
    (' --ccb_explore_adf --interactions "@@ --readable_model /tmp/x"', '"@@'),
    (" --ccb_explore_adf --daemon", "--daemon"),
    (" --ccb_explore_adf --bag 0", "--bag"),
    (" --cb_explore_adf --cb_adf", "--ccb_explore_adf"),
])
def test_header_options_that_fail_the_allow_list_are_refused(options: str, named: str) -> None:
    with pytest.raises(PersonalizerError) as err:
        workspace.read_header(with_header_options(_model(), options))
    assert err.value.code == "InvalidModelImportFormat" and named in err.value.message


def test_malformed_headers_are_refused() -> None:
    model = _model()
    for junk in (b"", b"garbage", b"\x00" * 64, model[:20], b"\x07\x00\x00\x008.0.0\x00\x00" + model[11:]):
        with pytest.raises(PersonalizerError) as err:
            workspace.read_header(junk)
        assert err.value.code == "InvalidModelImportFormat"
    with pytest.raises(PersonalizerError):
        workspace.load(with_header_options(model, " --ccb_explore_adf -d /etc/shadow"), DEFAULT_POLICY_ARGUMENTS)


def test_a_cb_explore_adf_model_is_refused() -> None:
    from vowpalwabbit import Workspace  # only to make a non-CCB model, which this package never builds

    vw = Workspace("--cb_explore_adf --quiet")
    path = Path(__import__("tempfile").mkdtemp()) / "cb.vw"
    vw.save(str(path))
    vw.finish()
    with pytest.raises(PersonalizerError) as err:
        workspace.read_header(path.read_bytes())
    assert err.value.code == "InvalidModelImportFormat" and "ccb_explore_adf" in err.value.message


# ---------------------------------------------------------------- trials

def test_a_good_policy_passes_its_trial_on_seed_examples() -> None:
    report = trial.trial_policy(effective_arguments(DEFAULT_POLICY_ARGUMENTS, 0.2))
    assert "--ccb_explore_adf" in report.arguments and report.model_bytes > 0


def test_a_policy_that_aborts_vw_on_model_replacement_fails_its_trial() -> None:
    """``--nn 1 --bag 2`` parses (each value is in range) but aborts VW when its workspace is freed."""
    with pytest.raises(PersonalizerError) as err:
        trial.trial_policy(" ".join(parse_arguments("--ccb_explore_adf --nn 1 --bag 2")))
    assert err.value.code == "InvalidPolicyConfiguration" and err.value.status == 400
    assert "SIGABRT" in err.value.message


def test_vw_refusing_in_the_child_is_a_clear_400() -> None:
    # Each value is in range; VW refuses the combination itself.
    with pytest.raises(PersonalizerError) as err:
        trial.trial_policy("--ccb_explore_adf --cover 2 --bag 2 --first 3")
    assert err.value.status == 400 and "trial" in err.value.message


def test_trial_examples_follow_live_requests() -> None:
    requests = trial.seed_requests()
    examples = trial.examples_from_requests(requests)
    assert len(examples) == len(requests)
    head, bodies, allowed, _ = encoding.encode_request(*requests[0])
    assert examples[0].unlabeled[: len(head)] == head and len(examples[0].labeled) == len(head) + len(bodies)


def test_model_trial_refuses_truncated_bytes_and_passes_whole_ones() -> None:
    model = _model()
    args = effective_arguments(DEFAULT_POLICY_ARGUMENTS, 0.2)
    assert trial.trial_model(model, args).model_bytes > 0
    with pytest.raises(PersonalizerError) as err:
        trial.trial_model(model[:-1], args)
    assert err.value.code == "InvalidModelImportFormat" and "truncated" in err.value.message
    with pytest.raises(PersonalizerError):
        trial.trial_model(model + b"\x00\x00\x00", args)


# ---------------------------------------------------------------- encoding caches

def test_scalar_cache_is_bounded_by_bytes() -> None:
    """Finding 6: unique large strings never accumulate (600 x 1 MB took RSS to 1.2 GB, for good)."""
    big = "x" * 1_000_000
    for i in range(50):
        encoding.shared_line([{"blob": f"{i}{big}"}])
    assert encoding.scalar_cache_bytes() <= encoding.SCALAR_CACHE_BYTES
    for i in range(60_000):  # many small unique values: more than the budget holds
        encoding.shared_line([{"k": f"value-{i}"}])
        assert encoding.scalar_cache_bytes() <= encoding.SCALAR_CACHE_BYTES
    assert encoding.scalar_cache_bytes() > 0


def test_catalog_cache_is_bounded_by_bytes_and_keyed_by_content() -> None:
    cache = encoding.CatalogCache(max_bytes=200_000)
    request = {"contextFeatures": [{"t": "m"}], "actions": [{"id": "a", "features": [{"x": 1}]},
                                                             {"id": "b", "features": [{"x": 2}]}],
               "slots": [{"id": "s", "features": [], "excludedActions": [], "baselineAction": "a"}]}
    for i in range(40):
        big = {**request, "actions": [{"id": "a", "features": [{"blob": f"{i}" + "y" * 20_000}]},
                                      request["actions"][1]]}
        assert cache.encode(big, f"e{i}") == encoding.encode_request(big, f"e{i}")
        assert cache.bytes <= 200_000
    # The same catalog with its fields in another order is another catalog, never the cached one.
    swapped = {"slots": request["slots"], "actions": request["actions"][::-1], "contextFeatures": []}
    assert cache.encode(request, "e") == encoding.encode_request(request, "e")
    assert cache.encode(swapped, "e") == encoding.encode_request(swapped, "e")
    assert cache.recent()[-1] == (swapped, "e")


def test_catalog_key_from_canonical_text_never_mixes_catalogs() -> None:
    """The cheap key (the canonical text after the context) is exact, even when a context holds ``"actions"``."""
    import json

    base = {"contextFeatures": [{"t": "m"}],
            "actions": [{"id": "a", "features": []}, {"id": "b", "features": []}],
            "slots": [{"id": "s", "features": [], "excludedActions": [], "baselineAction": "a"}],
            "deferActivation": False}
    spoof = {**base, "contextFeatures": [{"x": 1, "actions": [{"id": "zzz", "features": []}]}],
             "actions": base["actions"][::-1]}
    texts = [json.dumps(r, separators=(",", ":")) for r in (base, spoof)]
    keys = [encoding.catalog_key(r, t) for r, t in zip((base, spoof), texts, strict=True)]
    assert keys[0] != keys[1] and isinstance(keys[0], str)
    cache = encoding.CatalogCache()
    for request, text in [(base, texts[0]), (spoof, texts[1])] * 2:
        assert cache.encode(request, "e", text) == encoding.encode_request(request, "e")
    # Text laid out another way (catalog first): the digest of actions and slots is used instead.
    reordered = json.dumps({"actions": base["actions"], "slots": base["slots"], "contextFeatures": []})
    assert isinstance(encoding.catalog_key(base, reordered), bytes)


def test_a_policy_too_big_for_the_child_fails_its_trial_not_the_server() -> None:
    """Every value in range, but 2^24 weights x 64 hidden units x 16 bags: VW dies under the memory limit."""
    with pytest.raises(PersonalizerError) as err:
        trial.trial_policy(" ".join(parse_arguments("--ccb_explore_adf --nn 64 --bag 16 --cubic ::: -b 24")))
    assert (err.value.code, err.value.status) == ("InvalidPolicyConfiguration", 400)
    assert "trial" in err.value.message


def test_a_trial_over_its_wall_time_is_a_clear_400(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trial, "WALL_TIMEOUT_SECONDS", 0.01)
    with pytest.raises(PersonalizerError) as err:
        trial.trial_policy(effective_arguments(DEFAULT_POLICY_ARGUMENTS, 0.2))
    assert err.value.status == 400 and "did not finish its trial" in err.value.message
