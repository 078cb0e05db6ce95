"""What a key bound to a user / project sees, at the stores (both adapters): runs listed by owner,
approvals of that owner's runs, conversations per owner (``Principal.sees``)."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from supervisor.ids import new_id
from supervisor.stores.records import Approval
from supervisor.tenancy import Principal
from tests.contract._helpers import make_run, store

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def ctx(sql_db):
    t = await sql_db.new_tenant()
    return store(sql_db, "RunStore"), store(sql_db, "ApprovalStore"), t


def approval(tenant_id: str, run_id: str) -> Approval:
    now = time.time()
    return Approval(id=new_id("apr_"), tenant_id=tenant_id, run_id=run_id, tool="echo", args_hash="h" * 64, args={},
                    rule_id="r", reason="x", status="pending", created_at=now, expires_at=now + 60)


async def test_runs_and_approvals_are_listed_by_owner(ctx):
    runs, approvals, t = ctx
    owners = [(None, None), ("usr_a", None), ("usr_a", "prj_1"), ("usr_b", "prj_1"), (None, "prj_1")]
    made = {}
    for i, (user, project) in enumerate(owners):
        r = make_run(t, user_id=user, project_id=project, created_at=100.0 + i)
        await runs.create_run(r)
        made[(user, project)] = (r.id, (await approvals.create(approval(t, r.id))).id)

    def expect(user: str | None, project: str | None) -> tuple[set[str], set[str]]:
        p = Principal(tenant_id=t, key_id="key_x", role="viewer", user_id=user, project_id=project)
        owned = [ids for owner, ids in made.items() if p.sees(*owner)]
        return {r for r, _ in owned}, {a for _, a in owned}

    for user, project in ((None, None), ("usr_a", None), (None, "prj_1"), ("usr_a", "prj_1"), ("usr_c", None)):
        want_runs, want_approvals = expect(user, project)
        got = {r.id for r in await runs.list_runs(t, limit=100, user_id=user, project_id=project)}
        assert got == want_runs, (user, project)
        got = {a.id for a in await approvals.list(t, limit=100, user_id=user, project_id=project)}
        assert got == want_approvals, (user, project)
    assert len(expect("usr_a", None)[0]) == 2 and len(expect(None, "prj_1")[0]) == 3  # the table means something
    # the filters compose with the others: a page, a status, a run
    page = await runs.list_runs(t, limit=1, before=103.5, user_id="usr_a")
    assert [r.id for r in page] == [made[("usr_a", "prj_1")][0]]
    rid = made[("usr_b", "prj_1")][0]
    assert await approvals.list(t, run_id=rid, user_id="usr_a") == []
    assert len(await approvals.list(t, run_id=rid, status="pending", project_id="prj_1")) == 1


async def test_a_conversation_is_per_owner(ctx):
    """The same conversation id named by runs of two users: each run's history holds its own owner's turns."""
    runs, _, t = ctx
    a1 = make_run(t, conversation_id="c", input="alice-1", user_id="usr_a", created_at=10.0)
    b1 = make_run(t, conversation_id="c", input="bob-1", user_id="usr_b", created_at=11.0)
    n1 = make_run(t, conversation_id="c", input="nobody-1", created_at=12.0)
    a2 = make_run(t, conversation_id="c", input="alice-2", user_id="usr_a", created_at=20.0)
    b2 = replace(make_run(t, conversation_id="c", input="bob-2", created_at=21.0), user_id="usr_b", project_id="prj_1")
    n2 = make_run(t, conversation_id="c", input="nobody-2", created_at=22.0)
    for r in (a1, b1, n1, a2, b2, n2):
        await runs.create_run(r)

    async def inputs(run_id: str) -> list[str]:
        return [turn["content"] for turn in await runs.conversation_history(t, "c", run_id) if turn["role"] == "user"]

    assert await inputs(a2.id) == ["alice-1"]
    assert await inputs(n2.id) == ["nobody-1"]
    assert await inputs(b2.id) == []  # bob in project prj_1 is another owner than bob alone
    assert await inputs("run_unknown") == ["nobody-1", "nobody-2"]  # an unknown anchor: the unowned turns only
