"""AppTest: the Evaluate page's "Policy history" section (who changed the policy, the estimated lift, rollback)."""

from __future__ import annotations

from dashboard_fixtures import EVALUATE, shared_engine, texts
from streamlit.testing.v1 import AppTest

from personalizer.dashboard.policy_history import details, headline, lift_text
from personalizer.policy_history import ChangeNote

SLOWER = {"name": "slower", "arguments": "--ccb_explore_adf --epsilon 0.2 --cb_type mtr -q @_ -l 0.5"}


def test_the_history_lists_changes_and_rolls_back_with_one_click(app: AppTest) -> None:
    engine = shared_engine()
    default = engine.get_policy()
    app.switch_page(EVALUATE).run()
    assert not app.exception, app.exception
    assert "Policy history" in texts(app) and "No policy change yet." in texts(app)

    engine.update_policy(SLOWER)
    engine.reset_policy(note=ChangeNote(who="auto", action="reset"))  # the default is live again
    app.run()
    assert not app.exception, app.exception
    shown = texts(app)
    assert "**Reset to the default**: slower → Personalizer Studio default" in shown
    assert "by automatic optimization" in shown
    assert "**New policy**: Personalizer Studio default → slower" in shown and "by the API" in shown
    reset_id, update_id = (c["id"] for c in engine.policy_history())
    # The update's "before" (the default) is what runs now: nothing to roll back there.
    assert app.button(key=f"policy-rollback-{update_id}").disabled
    assert not app.button(key=f"policy-rollback-{reset_id}").disabled

    app.button(key=f"policy-rollback-{reset_id}").click().run()
    assert not app.exception, app.exception
    assert engine.get_policy()["name"] == "slower"
    newest = engine.policy_history()[0]
    assert newest["action"] == "rollback" and newest["who"] == "person" and newest["rollbackOf"] == reset_id
    assert f"Rolled back change {reset_id}" in texts(app)
    assert "**Rollback**: Personalizer Studio default → slower" in texts(app)
    assert app.button(key=f"policy-rollback-{reset_id}").disabled  # done: its "before" is live now
    assert engine.get_policy() != default


def test_texts_of_a_change_from_an_evaluation() -> None:
    change = {"id": "7", "time": "2027-01-15T08:00:00.000Z", "who": "auto", "action": "auto", "evaluationId": "e1",
              "before": {"name": "Old [x]", "arguments": "--ccb_explore_adf"}, "after": {"name": "New"},
              "estimate": {"lift": 0.1234, "liftInterval": [0.051, 0.19], "events": 1499}, "rollbackOf": None}
    assert headline(change) == "**Applied automatically**: Old \\[x\\] → New"
    assert details(change) == ("2027\\-01\\-15 08\\:00\\:00 UTC · by automatic optimization · estimated +12.3 "
                               "accept-rate points (+5.1 to +19.0) against the online policy over 1,499 events")
    assert lift_text(None) is None and lift_text({"lift": None}) is None
    assert lift_text({"lift": 0.02, "liftInterval": [None, None]}) == \
        "estimated +2.0 accept-rate points against the online policy"
