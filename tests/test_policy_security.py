"""Regressions of the hardening issue's VW findings: nothing a caller sends through a policy or a model
file can write a file, crash the process, or leave a data directory that crashes at every start.

Engine-level tests use the embedded engine; the crash findings run the real server in a
subprocess (``python -m personalizer serve``), because a crash is about the process.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
import requests
from seed_data import both_rewards, seed_request
from server_fixtures import HEADERS, ProcessServer, rank_request
from test_vw_boundary import with_header_options

from personalizer import evaluation
from personalizer.contract import PersonalizerError
from personalizer.engine import DEFAULT_POLICY_ARGUMENTS, DEFAULT_POLICY_NAME, LocalPersonalizer
from personalizer.store import EventLog


def _error(call: Any, *args: Any) -> PersonalizerError:
    with pytest.raises(PersonalizerError) as err:
        call(*args)
    return err.value


def _policy_attacks(target: Path) -> list[tuple[str, str]]:
    """(arguments, the token the refusal must name): finding 1's bypasses, each aimed at ``target``."""
    return [
        (f'--ccb_explore_adf --interactions "@@ -f {target}"', '"@@'),
        (f"--ccb_explore_adf --interactions @@ -f {target}", "-f"),
        (f"--ccb_explore_adf --readable_model {target}", "--readable_model"),
        ("--ccb_explore_adf -d /etc/shadow", "-d"),
        ('--ccb_explore_adf --interactions "@@ --daemon --port 18998 --num_children 1"', '"@@'),
        ("--ccb_explore_adf --daemon --port 18998 --num_children 1", "--daemon"),
    ]


def _train(engine: LocalPersonalizer, n: int = 20) -> None:
    for i in range(n):
        answer = engine.rank(seed_request(["morning", "evening"][i % 2]))
        engine.reward(answer["eventId"], both_rewards(i % 2, 1))


def test_policy_bypasses_are_refused_by_token_and_write_nothing(tmp_path: Path) -> None:
    target = tmp_path / "written.txt"
    with LocalPersonalizer(tmp_path / "data") as engine:
        before = engine.get_policy()
        for arguments, token in _policy_attacks(target):
            err = _error(engine.update_policy, {"name": "evil", "arguments": arguments})
            assert (err.code, err.status) == ("InvalidPolicyConfiguration", 400)
            assert f"'{token}'" in err.message, err.message
            assert engine.get_policy() == before
        _train(engine)
        engine.reset_model()  # the moment the old bypass wrote the file
        engine.checkpoint()
    assert not target.exists()


def test_out_of_range_options_are_refused_before_any_vw_work(tmp_path: Path) -> None:
    """Findings 3 and 4 (VW half): --bag 0 segfaulted, --nn 5000000 took 9 s a rank, -b 30 7 s a build."""
    with LocalPersonalizer(tmp_path / "data") as engine:
        for arguments, token in [("--ccb_explore_adf --bag 0", "--bag"), ("--ccb_explore_adf --nn 5000000", "--nn"),
                                 ("--ccb_explore_adf -b 30", "-b")]:
            err = _error(engine.update_policy, {"name": "slow", "arguments": arguments})
            assert err.code == "InvalidPolicyConfiguration" and f"'{token}'" in err.message
        assert engine.get_policy()["name"] == DEFAULT_POLICY_NAME


def test_a_policy_that_aborts_vw_is_refused_by_its_trial_and_changes_nothing(tmp_path: Path) -> None:
    with LocalPersonalizer(tmp_path / "data") as engine:
        _train(engine, 4)
        model = engine.export_model()
        err = _error(engine.update_policy, {"name": "abort", "arguments": "--ccb_explore_adf --nn 1 --bag 2"})
        assert (err.code, err.status) == ("InvalidPolicyConfiguration", 400) and "SIGABRT" in err.message
        assert engine.get_policy()["name"] == DEFAULT_POLICY_NAME and engine.export_model() == model
        accepted = engine.update_policy({"name": "bagged", "arguments": "--ccb_explore_adf --bag 3 -q @_"})
        assert accepted["name"] == "bagged"


def test_evaluation_candidates_go_through_the_same_parser_and_trial(tmp_path: Path) -> None:
    target = tmp_path / "written.txt"
    with LocalPersonalizer(tmp_path / "data") as engine:
        _train(engine, 6)
        with evaluation.Evaluations(engine, persist=False) as evals:
            attacks = [*_policy_attacks(target), ("--ccb_explore_adf --bag 0", "--bag")]
            for arguments, token in attacks:
                err = _error(evals.create, "e", "evil", "2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z",
                             [{"name": "evil", "arguments": arguments}])
                assert err.code == "InvalidPolicyConfiguration" and f"'{token}'" in err.message
            err = _error(evals.create, "e", "abort", "2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z",
                         [{"name": "abort", "arguments": "--ccb_explore_adf --nn 1 --bag 2"}])
            assert err.code == "InvalidPolicyConfiguration" and "trial" in err.message
            assert evals.list() == []
    assert not target.exists()


def _store_policy(home: Path, arguments: str) -> None:
    log = EventLog(home)
    try:
        log.set_setting("policy", {"name": "stored", "arguments": arguments})
    finally:
        log.close()


@pytest.mark.parametrize("arguments", ["--ccb_explore_adf --readable_model {target}",
                                       "--ccb_explore_adf --nn 1 --bag 2"])
def test_a_stored_bad_policy_is_set_aside_at_start(tmp_path: Path, arguments: str) -> None:
    target = tmp_path / "written.txt"
    home = tmp_path / "data"
    with LocalPersonalizer(home) as engine:
        _train(engine, 6)
    _store_policy(home, arguments.format(target=target))
    with LocalPersonalizer(home) as engine:
        assert engine.get_policy()["name"] == DEFAULT_POLICY_NAME
        assert engine.stats()["learned"] == 6
        _train(engine, 2)
        engine.reset_model()
    log = EventLog(home)
    try:
        aside = log.get_setting("policy_set_aside")
        assert aside["policy"]["name"] == "stored" and aside["reason"]
        assert log.get_setting("policy")["arguments"] == DEFAULT_POLICY_ARGUMENTS
    finally:
        log.close()
    with LocalPersonalizer(home) as engine:  # and again: the default stays, nothing crashes
        assert engine.get_policy()["name"] == DEFAULT_POLICY_NAME
    assert not target.exists()


def test_a_checkpoint_whose_header_fails_the_allow_list_is_rebuilt_from_the_log(tmp_path: Path) -> None:
    target = tmp_path / "written.txt"
    home = tmp_path / "data"
    with LocalPersonalizer(home) as engine:
        _train(engine, 8)
        engine.checkpoint()
        healthy = engine.greedy(seed_request("evening"))
    db = sqlite3.connect(home / "personalizer.sqlite3")
    (cp_id, model), = db.execute("SELECT id, model FROM checkpoints ORDER BY id DESC LIMIT 1").fetchall()
    evil = with_header_options(model, f" --ccb_explore_adf --interactions @@ --readable_model {target}")
    db.execute("UPDATE checkpoints SET model = ? WHERE id = ?", (evil, cp_id))
    db.commit()
    db.close()
    with LocalPersonalizer(home) as engine:
        assert engine.greedy(seed_request("evening")) == healthy  # replayed from the log: the same model
        engine.reset_model()
    assert not target.exists()


def _cb_model() -> bytes:
    from vowpalwabbit import Workspace  # only to make a non-CCB model, which the package never builds

    with tempfile.TemporaryDirectory() as folder:
        vw = Workspace("--cb_explore_adf --quiet")
        vw.save(f"{folder}/cb.vw")
        vw.finish()
        return Path(f"{folder}/cb.vw").read_bytes()


def _evil_model(target: Path) -> bytes:
    """Finding 2 as reported: a model VW itself saved with an interactions value hiding an option."""
    from vowpalwabbit import Workspace  # only to build the attacker's file

    with tempfile.TemporaryDirectory() as folder:
        vw = Workspace(f'--ccb_explore_adf --quiet --interactions "@@ --readable_model {target}"')
        vw.save(f"{folder}/evil.vw")
        vw.finish()
        return Path(f"{folder}/evil.vw").read_bytes()


def test_model_imports_check_header_options_ccb_and_truncation(tmp_path: Path) -> None:
    target = tmp_path / "written.txt"
    with LocalPersonalizer(tmp_path / "data") as engine:
        _train(engine, 10)
        exported, page = engine.export_model(), engine.greedy(seed_request("evening"))
        evil = _evil_model(target)
        target.unlink(missing_ok=True)
        crafted = with_header_options(exported, f" --ccb_explore_adf --interactions @@ --readable_model {target}")
        for model, named in [(evil, '"@@'), (crafted, "--readable_model"), (_cb_model(), "ccb_explore_adf"),
                             (exported[:-1], "truncated")]:
            err = _error(engine.import_model, model)
            assert (err.code, err.status) == ("InvalidModelImportFormat", 400)
            assert named in err.message, err.message
            assert engine.greedy(seed_request("evening")) == page  # the live model is untouched
        engine.import_model(exported)  # a whole, allowed model still imports
        engine.reset_model()
    assert not target.exists()


# ---------------------------------------------------------------- the real server

def _put(base: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.put(f"{base}/personalizer/v1.1-preview.3/{path}", headers=kwargs.pop("headers", HEADERS),
                        timeout=60, **kwargs)


def _serving(server: ProcessServer) -> None:
    assert server.proc is not None and server.proc.poll() is None
    assert requests.get(f"{server.base}/health", timeout=10).status_code == 200
    ranked = requests.post(f"{server.base}/personalizer/v1.1-preview.3/multislot/rank", json=rank_request(),
                           headers=HEADERS, timeout=10)
    assert ranked.status_code == 201


def test_server_refuses_crashing_policies_and_models_and_keeps_serving(tmp_path: Path) -> None:
    """Finding 3: --bag 0 segfaulted the server; --nn 1 --bag 2 aborted it at every model replacement, also
    after every restart. Now both are 400s, and a data directory holding such a policy still starts."""
    target = tmp_path / "written.txt"
    home = tmp_path / "data"
    binary = {**HEADERS, "Content-Type": "application/octet-stream"}
    with ProcessServer(home) as server:
        for arguments in ("--ccb_explore_adf --bag 0", "--ccb_explore_adf --nn 1 --bag 2",
                          f'--ccb_explore_adf --interactions "@@ -f {target}"'):
            answer = _put(server.base, "configurations/policy", json={"name": "x", "arguments": arguments})
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "InvalidPolicyConfiguration"
            _serving(server)
        model = requests.get(f"{server.base}/personalizer/v1.1-preview.3/model", headers=HEADERS, timeout=10)
        crafted = with_header_options(model.content, f" --ccb_explore_adf --interactions @@ --readable_model {target}")
        answer = _put(server.base, "model", data=crafted, headers=binary)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "InvalidModelImportFormat"
        assert _put(server.base, "model", data=model.content[:-1], headers=binary).status_code == 400
        assert requests.delete(f"{server.base}/personalizer/v1.1-preview.3/model", headers=HEADERS,
                               timeout=10).status_code == 204
        _serving(server)
    _store_policy(home, "--ccb_explore_adf --nn 1 --bag 2")  # as an older version would have stored it
    with ProcessServer(home) as server:
        _serving(server)
        policy = requests.get(f"{server.base}/personalizer/v1.1-preview.3/configurations/policy", headers=HEADERS,
                              timeout=10).json()
        assert policy["name"] == DEFAULT_POLICY_NAME
        assert requests.delete(f"{server.base}/personalizer/v1.1-preview.3/model", headers=HEADERS,
                               timeout=10).status_code == 204
        _serving(server)
    with ProcessServer(home) as server:  # restarts stay clean
        _serving(server)
    assert not target.exists()
