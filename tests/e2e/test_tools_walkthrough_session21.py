"""Session 21: an outside-in walkthrough of the built-in tools a bundle calls (``storage.*``, ``kb.*``),
as a user and as an attacker, through a real node on both stacks (SQLite/memory and PostgreSQL/Redis).

Every probe starts a run of the ``caller`` bundle, reads its results, and checks the audit log, the
ledger or the store. The attacks that already failed safely are kept as the adversarial suite.
"""

from __future__ import annotations

import asyncio
import secrets
import unicodedata

import pytest

from tests.e2e.harness import make_data_dir, settings_for, start_node
from tests.e2e.test_governance import plan, results_of
from tests.e2e.test_run_pipeline import push, start

pytestmark = pytest.mark.timeout(180)

NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")


async def _tenant(node):
    tid, key = await node.tenant()  # the shipped default policy: kb.* and storage.* allowed, priced
    await push(node, tid, "toolprobe")
    return tid, node.client(key)


async def _run(c, *calls, concurrent: bool = False):
    run = await start(c, "toolprobe", plan(*calls, concurrent=concurrent))
    results, events = await results_of(c, run["id"])
    return results, events, run


def _w(path: str, content: str, **extra) -> dict:
    return {"tool": "storage.write", "args": {"path": path, "content": content, "scope": "shared", **extra}}


def _r(path: str) -> dict:
    return {"tool": "storage.read", "args": {"path": path, "scope": "shared"}}


def _ls(path: str = "") -> dict:
    return {"tool": "storage.list", "args": {"path": path, "scope": "shared"}}


async def _spent(c) -> float:
    """What the tenant was charged, from its ledger."""
    r = await c.get("/v1/ledger", params={"limit": 500})
    assert r.status_code == 200, r.text
    return round(sum(e["amount_usd"] for e in r.json()["data"] if e["scope"] == "tenant"), 6)


def _big(text: str, n: int) -> dict:
    return {"$repeat": [text, n]}  # built in the sandbox (toolprobe): a run's input is capped at 256 KiB


# ---------------------------------------------------------------------------------------------- storage


async def test_storage_path_tricks_are_refused_with_stable_codes_and_write_nothing(node):
    tid, c = await _tenant(node)
    hostile = [
        ("../x", "storage.escape"),
        ("a/../../x", "storage.escape"),
        ("a/../b", "storage.escape"),
        ("/etc/passwd", "storage.escape"),
        ("a\\..\\b", "storage.escape"),
        ("a\x00b", "input.invalid"),
        ("a\nb", "input.invalid"),
        ("a\u0085b", "input.invalid"),
        ("x" * 1025, "input.invalid"),
        ("d/" + "é" * 128, "input.invalid"),  # a component of 256 bytes
        ("", "input.invalid"),
        ("./", "input.invalid"),
    ]
    results, _, run = await _run(c, *(_w(p, "boom") for p, _ in hostile), _ls())
    assert [r.get("error") for r in results[:-1]] == [code for _, code in hostile], results
    assert results[-1] == {"ok": {"path": "", "scope": "shared", "entries": [], "truncated": False}}, results[-1]
    audit = (await c.get("/v1/audit", params={"run_id": run["id"], "limit": 500})).json()["data"]
    codes = [a.get("code") for a in audit if a["tool"] == "storage.write"]
    assert sorted(x for x in codes if x) == sorted(code for _, code in hostile), audit
    assert await _spent(c) == 0.0001  # the listing; no refused write was charged


async def test_storage_literal_lookalikes_are_names_not_traversals(node):
    """``%2e%2e`` is not decoded, fullwidth dots and the one-dot leader are not ``..``: each is a plain file
    inside the scope, read back under exactly the name it was written with."""
    _, c = await _tenant(node)
    names = ["%2e%2e/x", "%2E%2E%2Fx", "\uff0e\uff0e/x", "\u2024\u2024/x", "..a/x", "a../x", "...", "a/./b//c"]
    results, _, _ = await _run(c, *(_w(n, n) for n in names), *(_r(n) for n in names), _ls())
    assert all("ok" in r for r in results), results
    canon = ["%2e%2e/x", "%2E%2E%2Fx", "\uff0e\uff0e/x", "\u2024\u2024/x", "..a/x", "a../x", "...", "a/b/c"]
    assert [r["ok"]["path"] for r in results[: len(names)]] == canon
    assert [r["ok"]["content"] for r in results[len(names): 2 * len(names)]] == names
    assert {e["name"] for e in results[-1]["ok"]["entries"]} == {
        "%2e%2e", "%2E%2E%2Fx", "\uff0e\uff0e", "\u2024\u2024", "..a", "a..", "...", "a"}


async def test_storage_nfc_and_nfd_name_one_file_and_case_names_another(node):
    _, c = await _tenant(node)
    results, _, _ = await _run(
        c, _w(f"{NFC}/menu.txt", "nfc"), _w(f"{NFD}/menu.txt", "nfd"), _r(f"{NFC}/menu.txt"),
        _w("Cafe.txt", "upper"), _w("cafe.txt", "lower"), _r("Cafe.txt"), _ls())
    assert all("ok" in r for r in results), results
    assert results[0]["ok"]["created"] is True and results[1]["ok"]["created"] is False
    assert results[1]["ok"]["path"] == f"{NFC}/menu.txt"
    assert results[2]["ok"]["content"] == "nfd"
    assert results[5]["ok"]["content"] == "upper"
    assert [e["name"] for e in results[6]["ok"]["entries"]] == ["Cafe.txt", "cafe.txt", NFC]


async def test_storage_of_one_tenant_is_invisible_to_another(node):
    _, a = await _tenant(node)
    _, b = await _tenant(node)
    results, _, _ = await _run(a, _w("secret/plan.txt", "tenant A"))
    assert "ok" in results[0], results
    results, _, _ = await _run(b, _r("secret/plan.txt"), _ls("secret"), _ls(),
                               {"tool": "storage.delete", "args": {"path": "secret/plan.txt", "scope": "shared"}},
                               {"tool": "storage.rollback", "args": {"path": "secret/plan.txt", "scope": "shared"}})
    assert [r.get("error") for r in results] == [
        "storage.not_found", "storage.not_found", None, "storage.not_found", "storage.not_found"], results
    assert results[2]["ok"]["entries"] == []
    results, _, _ = await _run(a, _r("secret/plan.txt"))
    assert results[0]["ok"]["content"] == "tenant A"


@pytest.mark.node_settings(storage_quota_mb=1)
async def test_storage_quota_holds_for_two_runs_at_once(node):
    """Two runs, each writing 400 KB three times at once, into a 1 MB quota: never more than fits."""
    tid, c = await _tenant(node)
    big = _big("x", 400_000)
    runs = await asyncio.gather(*(
        start(c, "toolprobe", plan(*(_w(f"r{k}/f{i}", big) for i in range(3)), concurrent=True)) for k in range(2)))
    outcomes = []
    for run in runs:
        results, _ = await results_of(c, run["id"])
        outcomes += [r.get("error") for r in results]
    assert outcomes.count(None) == 2 and outcomes.count("storage.quota") == 4, outcomes
    area = node.rt.services.settings.data_dir
    from supervisor.tools.storage._area import TenantArea
    assert TenantArea(area, tid, 1024 * 1024).usage() <= 1024 * 1024
    # the quota refusals were not charged: 2 writes at 0.0001
    assert await _spent(c) == 0.0002


@pytest.mark.node_settings(storage_quota_mb=1)
async def test_storage_delete_gives_the_room_back(node):
    """Fill, delete, fill again: the delete is credited (its snapshot is history, dropped first)."""
    _, c = await _tenant(node)
    big = _big("y", 700_000)
    results, _, _ = await _run(
        c, _w("a", big), _w("b", big), {"tool": "storage.delete", "args": {"path": "a", "scope": "shared"}},
        _w("b", big, ), _w("c", big))
    assert [r.get("error") for r in results] == [None, "storage.quota", None, None, "storage.quota"], results


async def test_storage_write_with_an_explicit_key_writes_and_charges_once(node):
    _, c = await _tenant(node)
    call = {**_w("k.txt", "one"), "key": "write-k-1"}
    results, events, _ = await _run(c, call, call, _w("k.txt", "two"), call, _r("k.txt"))
    assert [e.data["deduped"] for e in events if e.event == "tool.result"] == [False, True, False, True, False]
    assert results[4]["ok"]["content"] == "two"  # the replay wrote nothing
    other = {**_w("k.txt", "three"), "key": "write-k-1"}
    results, _, _ = await _run(c, other, _r("k.txt"))
    assert results[0]["error"] == "idempotency.mismatch", results
    assert results[1]["ok"]["content"] == "two"
    assert await _spent(c) == round(0.0001 * 4, 6)  # write, write two, read, read


# ---------------------------------------------------------------------------------------------- kb


def _add(text: str, **extra) -> dict:
    return {"tool": "kb.add", "args": {"text": text, **extra}}


def _search(q: str, **extra) -> dict:
    return {"tool": "kb.search", "args": {"query": q, **extra}}


async def test_kb_hostile_arguments_are_refused_before_anything_is_stored(node):
    tid, c = await _tenant(node)
    bad = [
        _add("x", doc_id="../etc"),
        _add("x", doc_id="a b"),
        _add("x", doc_id=NFC),
        _add("x", doc_id="a\x00"),
        _add("x", doc_id="a" * 201),
        _add("x", doc_id=""),
        _add(""),
        _add("a\x00b"),
        _add(_big("x", 200_001)),
        _add("x", title="t" * 501),
        _add("x", title=7),
        _search("a" * 1001),
        _search("x", limit=0),
        _search("x", limit=51),
        _search("x", limit=True),
        {"tool": "kb.delete", "args": {"doc_id": "%"}},
        {"tool": "kb.delete", "args": {}},
    ]
    results, _, _ = await _run(c, *bad)
    codes = [r.get("error") for r in results]
    assert codes == ["input.invalid"] * 8 + ["input.too_large"] + ["input.invalid"] * 8, results
    assert (await node.rt.services.kb.usage(tid)).docs == 0
    assert await _spent(c) == 0


async def test_kb_documents_of_one_tenant_are_invisible_to_another(node):
    a_tid, a = await _tenant(node)
    _, b = await _tenant(node)
    results, _, _ = await _run(a, _add("the zanzibar launch plan", doc_id="plan"))
    assert "ok" in results[0]
    results, _, _ = await _run(b, _search("zanzibar"), {"tool": "kb.delete", "args": {"doc_id": "plan"}},
                               _add("overwritten by b", doc_id="plan"), _search("zanzibar"))
    assert results[0]["ok"]["results"] == [] and results[1]["ok"]["deleted"] is False
    assert results[3]["ok"]["results"] == []
    results, _, _ = await _run(a, _search("zanzibar"))
    assert [h["doc_id"] for h in results[0]["ok"]["results"]] == ["plan"]


async def test_kb_doc_ids_differing_in_case_are_two_documents(node):
    tid, c = await _tenant(node)
    results, _, _ = await _run(c, _add("upper marmalade", doc_id="Doc"), _add("lower marmalade", doc_id="doc"),
                               _search("marmalade", limit=10))
    assert sorted(h["doc_id"] for h in results[2]["ok"]["results"]) == ["Doc", "doc"], results
    assert (await node.rt.services.kb.usage(tid)).docs == 2


async def _kb_tie_order(node) -> None:
    _, c = await _tenant(node)
    ids = ["b-2", "B-1", "a_3", "A-4", "0z", "Z"]
    results, _, _ = await _run(c, *(_add("identical quokka text", doc_id=i) for i in ids),
                               _search("quokka", limit=10), _search("quokka", limit=3))
    assert [h["doc_id"] for h in results[-2]["ok"]["results"]] == sorted(ids), results[-2]
    assert [h["doc_id"] for h in results[-1]["ok"]["results"]] == sorted(ids)[:3], results[-1]


async def test_kb_ties_are_ordered_by_doc_id_bytes(node):
    await _kb_tie_order(node)


@pytest.fixture
def en_us_pg_url():
    """A database whose default collation is en-US (ICU), as in the postgres image (en_US.utf8), where text
    does not sort byte by byte: ``a_3`` < ``A-4`` < ``B-1``."""
    import asyncpg

    from tests.conftest import PG_ADMIN_URL, RUN_TAG, _drop_db, _need, _with_db

    _need(PG_ADMIN_URL, 5432, "PostgreSQL")
    name = f"stockade_test_{RUN_TAG}_enus_{secrets.token_hex(3)}"

    async def create() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu '
                               f"ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'")
        finally:
            await conn.close()

    asyncio.run(create())
    yield _with_db(PG_ADMIN_URL, name)
    asyncio.run(_drop_db(name))


async def test_kb_ties_are_ordered_by_doc_id_bytes_under_an_en_us_collation(en_us_pg_url, redis_url, redis_prefix):
    """Found by this walkthrough: PostgreSQL ordered equal scores by doc_id under the database's collation, so
    on a database made by the postgres image (en_US.utf8) the stacks listed ties differently - and kept
    different documents at the ``limit`` (here A-4, B-1, Z on SQLite; 0z, a_3, A-4 on PostgreSQL)."""
    node = await start_node(settings_for("production", make_data_dir(), pg_url=en_us_pg_url, redis_url=redis_url,
                                         redis_prefix=redis_prefix))
    try:
        await _kb_tie_order(node)
    finally:
        await node.stop()


async def test_kb_nfc_and_nfd_spellings_find_the_same_documents_on_both_stacks(node):
    """Found by this walkthrough: on PostgreSQL ``café`` typed NFC found only the document written NFC, and
    typed NFD (e + U+0301, as macOS sends it) only the one written NFD; SQLite found both either way.
    Documents and queries are NFC on both stacks now."""
    tid, c = await _tenant(node)
    results, _, _ = await _run(
        c, _add(f"the {NFC} on the corner", doc_id="nfc"), _add(f"a {NFD} downtown", doc_id="nfd", title=NFD),
        _search(NFC, limit=10), _search(NFD, limit=10), _search(f"{NFD} -corner", limit=10))
    found = [sorted(h["doc_id"] for h in r["ok"]["results"]) for r in results[2:]]
    assert found == [["nfc", "nfd"], ["nfc", "nfd"], ["nfd"]], found
    snippet = next(h for h in results[2]["ok"]["results"] if h["doc_id"] == "nfd")
    assert snippet["title"] == NFC and NFC in snippet["snippet"].replace("**", ""), snippet
    # what is counted against the quota is what is stored: the NFC text
    assert (await node.rt.services.kb.usage(tid)).bytes == len(f"the {NFC} on the corner".encode()) + len(
        f"a {NFC} downtown".encode()) + len(NFC.encode())


async def test_kb_an_unaccented_query_finds_accented_words_on_both_stacks(node):
    """``cafe`` found ``café`` on SQLite (FTS5's tokenizer drops diacritics) but not on PostgreSQL (the
    ``english`` configuration kept them); migration 0046 folds them there too (``stockade_kb_fold``)."""
    _, c = await _tenant(node)
    results, _, _ = await _run(c, _add(f"the {NFC} on the corner", doc_id="accented"), _add("a cafe", doc_id="plain"),
                               _search("cafe", limit=10), _search(NFC, limit=10))
    found = [sorted(h["doc_id"] for h in r["ok"]["results"]) for r in results[2:]]
    assert found == [["accented", "plain"], ["accented", "plain"]], found


async def test_kb_add_with_an_explicit_key_adds_and_charges_once(node):
    tid, c = await _tenant(node)
    call = {**_add("a note without an id"), "key": "kb-add-1"}
    results, events, _ = await _run(c, call, call)
    assert results[0] == results[1]
    assert (await node.rt.services.kb.usage(tid)).docs == 1
    results, events, _ = await _run(c, call)
    assert results[0]["ok"]["doc_id"] and (await node.rt.services.kb.usage(tid)).docs == 1
    assert await _spent(c) == 0.0002


@pytest.mark.node_settings(kb_quota_docs=3)
async def test_kb_quota_holds_for_two_runs_at_once_and_refusals_are_free(node):
    tid, c = await _tenant(node)
    runs = await asyncio.gather(*(
        start(c, "toolprobe", plan(*(_add(f"note {k} {i}") for i in range(4)), concurrent=True)) for k in range(2)))
    codes = []
    for run in runs:
        results, _ = await results_of(c, run["id"])
        codes += [r.get("error") for r in results]
    assert codes.count(None) == 3 and codes.count("kb.quota") == 5, codes
    assert (await node.rt.services.kb.usage(tid)).docs == 3
    assert await _spent(c) == round(3 * 0.0002, 6)


async def test_kb_search_syntax_attacks_never_fail_and_agree_across_stacks(node):
    """FTS5 and tsquery syntax in a query is data: column filters, NEAR, stars, carets, unbalanced quotes and
    parentheses, long NOT runs. Every one answers (no ``internal``), the same documents on both stacks."""
    _, c = await _tenant(node)
    queries = [
        'title:secret', "body:fox", "NEAR(fox dog)", "fox*", "^fox", '"fox', 'fox"', "(((fox", "fox)))",
        "fox AND", "OR fox", "or or or", "- - - - fox", "-" * 40 + "fox", "!fox", "fox & dog", "fox | dog",
        "fox <-> dog", "fox:*", "'fox'", "\\fox", "{fox}", "*", '""', "-fox", "the -fox", "fox -dog",
        "quick OR -dog", "\u200bfox", "ｆｏｘ",
    ]
    results, _, _ = await _run(c, _add("the quick brown fox jumps over the lazy dog", doc_id="fox", title="secret"),
                               _add("a lone fox", doc_id="lone"), *(_search(q, limit=10) for q in queries))
    assert all("ok" in r for r in results), [(q, r) for q, r in zip(["", ""] + queries, results, strict=True) if "ok" not in r]
    found = {q: sorted(h["doc_id"] for h in r["ok"]["results"]) for q, r in zip(queries, results[2:], strict=True)}
    both, fox, none = ["fox", "lone"], ["fox"], []
    assert found == {
        "title:secret": none, "body:fox": none, "NEAR(fox dog)": none, "fox*": both, "^fox": both, '"fox': both,
        'fox"': both, "(((fox": both, "fox)))": both, "fox AND": both, "OR fox": both, "or or or": none,
        "- - - - fox": none, "-" * 40 + "fox": none, "!fox": both, "fox & dog": fox, "fox | dog": fox,
        "fox <-> dog": fox, "fox:*": both, "'fox'": both, "\\fox": both, "{fox}": both, "*": none, '""': none,
        "-fox": none, "the -fox": none, "fox -dog": ["lone"], "quick OR -dog": fox, "\u200bfox": both,
        "ｆｏｘ": none,
    }, found


async def test_kb_a_dash_apart_from_its_word_excludes_on_both_stacks(node):
    """Found by this walkthrough: ``apple - banana`` is apple without banana on PostgreSQL
    (``websearch_to_tsquery`` reads a lone ``-`` as NOT) but was apple *with* banana on SQLite, which
    ignored the lone dash; ``apple --banana`` (NOT NOT) was the reverse. SQLite reads NOTs as PostgreSQL."""
    _, c = await _tenant(node)
    queries = {
        "apple - banana": ["ac"], "apple -banana": ["ac"], "apple - - banana": ["ab"], "apple --banana": ["ab"],
        "apple - (banana": ["ac"], "apple -! banana": ["ac"], 'apple - "banana split"': ["ab", "ac"],
        'apple - "apple banana"': ["ac"], 'apple --"apple banana"': ["ab"], "apple - . banana": ["ab"],
        "apple -> banana": ["ab"], "- or banana": ["ab"], "apple - the": ["ab", "ac"],
        "--banana": [], "- banana": [], "cherry or - banana": ["ac"],
        # after a NOT, "or" is a (stop) word, not an alternative (review finding: SQLite read it as OR)
        "apple - or banana": ["ab"], "apple - OR cherry": ["ac"], "cherry -- or apple": ["ac"],
        "apple or - or banana": ["ab", "ac"],
    }
    results, _, _ = await _run(c, _add("apple banana", doc_id="ab"), _add("apple cherry", doc_id="ac"),
                               *(_search(q, limit=10) for q in queries))
    found = {q: sorted(h["doc_id"] for h in r["ok"]["results"]) for q, r in zip(queries, results[2:], strict=True)}
    assert found == queries, found


async def test_kb_add_replay_with_other_text_is_a_mismatch_and_changes_nothing(node):
    tid, c = await _tenant(node)
    results, _, _ = await _run(c, {**_add("first text", doc_id="k"), "key": "kb-k"},
                               {**_add("second text", doc_id="k"), "key": "kb-k"}, _search("first"), _search("second"))
    assert results[1]["error"] == "idempotency.mismatch", results
    assert [h["doc_id"] for h in results[2]["ok"]["results"]] == ["k"] and results[3]["ok"]["results"] == []
    assert await _spent(c) == round(0.0002 + 2 * 0.0001, 6)


async def test_storage_bad_targets_are_refused_and_change_nothing(node):
    _, c = await _tenant(node)
    results, _, run = await _run(
        c, _w("dir/file.txt", "inside"),
        _w("dir", "over a directory"),                    # 1: a directory
        _w("dir/file.txt/child", "under a file"),         # 2: a parent is a file
        _r("dir"),                                         # 3: a directory is no file
        _ls("dir/file.txt"),                               # 4: a file is no directory
        _ls("nowhere"),                                    # 5
        {"tool": "storage.delete", "args": {"path": "dir", "scope": "shared"}},  # 6: a directory
        {"tool": "storage.rollback", "args": {"path": "never", "scope": "shared"}},  # 7
        {"tool": "storage.write", "args": {"path": "x", "content": 5, "scope": "shared"}},  # 8
        {"tool": "storage.write", "args": {"path": "x", "content": "c", "scope": "team"}},  # 9
        {"tool": "storage.write", "args": {"path": "x", "content": "c", "scope": "user"}},  # 10: no user
        {"tool": "storage.write", "args": {"path": "x", "content": "c", "mode": "append"}},  # 11: unknown arg
        _ls("dir"),
    )
    codes = [r.get("error") for r in results]
    assert codes == [None, "input.invalid", "input.invalid", "storage.not_found", "input.invalid",
                     "storage.not_found", "storage.not_found", "storage.not_found", "input.invalid", "input.invalid",
                     "input.invalid", "input.invalid", None], results
    assert results[-1]["ok"]["entries"] == [{"name": "file.txt", "type": "file", "size": 6}]
    # tool failures cost nothing: the first write and the last listing are charged
    assert await _spent(c) == 0.0002


async def test_storage_content_with_nul_and_unicode_round_trips_on_both_stacks(node):
    _, c = await _tenant(node)
    text = "a\x00b \u202e gnp.exe \U0001f600 " + NFD
    results, events, run = await _run(c, _w("odd.txt", text), _r("odd.txt"), {**_w("odd2.txt", text), "key": "nul-w"},
                                      {**_w("odd2.txt", text), "key": "nul-w"})
    assert all("ok" in r for r in results), results
    # the file holds the NUL (its size counts one byte for it); the bundle's own event carrying the results
    # shows U+FFFD in its place, as every stored event does (supervisor/storable.py)
    assert results[1]["ok"]["size"] == len(text.encode()), results[1]
    assert results[1]["ok"]["content"] == text.replace("\x00", "\ufffd")
    audit = (await c.get("/v1/audit", params={"run_id": run["id"], "limit": 100})).json()["data"]
    assert {a["kind"] for a in audit if a["tool"] == "storage.write"} >= {"tool.allowed"}


@pytest.mark.node_settings(storage_quota_mb=1)
async def test_storage_many_small_files_are_charged_a_block_each(node):
    """300 empty files cannot fit in 1 MiB: each is charged 4 KiB (history - the ``.absent`` markers of new
    files and their directories - is dropped to make room, live files never)."""
    _, c = await _tenant(node)
    results, _, _ = await _run(c, *(_w(f"f{i}", "") for i in range(300)))
    codes = [r.get("error") for r in results]
    ok = codes.count(None)
    assert 200 < ok <= 1024 * 1024 // 4096 and set(codes[ok:]) == {"storage.quota"}, codes
    results, _, _ = await _run(c, _ls())
    assert len(results[0]["ok"]["entries"]) == ok


@pytest.mark.node_settings(storage_quota_mb=1)
async def test_storage_overwrites_drop_history_not_live_data_and_a_refused_write_can_be_retried(node):
    _, c = await _tenant(node)
    big = _big("z", 300_000)
    results, events, _ = await _run(
        c, *(_w("same", big) for _ in range(2)), *(_w("same", _big(str(i), 300_000)) for i in range(8)),
        _w("other", _big("o", 900_000)),     # 10: does not fit next to "same", even without history
        {"tool": "storage.delete", "args": {"path": "same", "scope": "shared"}},
        _w("other", _big("o", 900_000)),     # 12: the same call again: runs (the refusal freed its key)
        _r("other"))
    codes = [r.get("error") for r in results]
    assert codes == [None] * 10 + ["storage.quota", None, None, None], results
    assert [e.data["deduped"] for e in events if e.event == "tool.result"][1] is True
    assert results[13]["ok"]["content_len"] == 900_000


# ---------------------------------------------------------------------------------------------- code.run


async def test_code_run_input_file_tricks_are_refused_and_inputs_do_not_leak_between_calls(node):
    tid, c = await _tenant(node)

    def run(files: dict, code: str = "print(open('main.py').read()[:5])") -> dict:
        return {"tool": "code.run", "args": {"code": code, "files": files}}

    bad = [{"../x": "a"}, {"/etc/x": "a"}, {"./main.py": "evil"}, {"a//main.py/..": "b"}, {"": "a"}, {".": "a"},
           {"a\x00b": "a"}, {"a": "file", "a/b": "under a file"}, {"x" * 300: "too long a name"}]
    results, _, _ = await _run(
        c, *(run(f) for f in bad),
        run({"data/in.txt": "hello"}, "import os; print(open('data/in.txt').read()); open('out.txt','w').write('o')"),
        run({}, "import os; print(sorted(os.listdir('.')))"),
    )
    assert [r.get("error") for r in results[: len(bad)]] == ["input.invalid"] * len(bad), results
    first, second = results[-2]["ok"], results[-1]["ok"]
    assert first["stdout"] == "hello\n" and [f["path"] for f in first["files"]] == ["out.txt"], first
    assert second["stdout"] == "['main.py']\n", second  # a fresh work dir: nothing of the call before
    assert await _spent(c) == round(2 * 0.001, 6)  # refused inputs cost nothing


# ---------------------------------------------------------------------------------------------- http.request

HTTP_POLICY = """
version: 1
rules:
  - {id: any-http, tool: http.request, verdict: allow}
prices:
  http.request: 0.0005
"""


async def test_http_request_to_internal_addresses_in_any_spelling_is_refused_and_free(node):
    _, c = await _tenant(node)
    r = await c.put("/v1/policy", content=HTTP_POLICY, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 200, r.text
    urls = ["http://127.0.0.1:1/", "http://localhost:1/", "http://2130706433/", "http://0x7f.1/", "http://017700000001/",
            "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/", "http://0/",
            "http://127.1/", "http://[0:0:0:0:0:ffff:7f00:1]/", "http://localhost./", "http://LOCALHOST/"]
    odd = ["http://user@127.0.0.1/", "http://127.0.0.1%2f@example.invalid/", "file:///etc/passwd", "gopher://127.0.0.1/", "ftp://example.com/", "http://", "not a url", "http://a b/"]
    results, _, run = await _run(c, *({"tool": "http.request", "args": {"method": "GET", "url": u}} for u in urls + odd))
    codes = [r.get("error") for r in results]
    assert None not in codes and "internal" not in codes and "tool.failed" not in codes, list(zip(urls + odd, codes, strict=True))
    assert codes == ["egress.blocked"] * len(urls) + ["input.invalid"] * len(odd), list(zip(urls + odd, codes, strict=True))
    assert await _spent(c) == 0


async def test_storage_user_scope_and_explicit_keys_are_per_user(node):
    """Two users of one tenant (keys bound to each): ``scope: user`` is each one's own folder, the same
    path names two files, and one user's idempotency key never replays the other's write."""
    _, admin = await _tenant(node)
    clients = []
    for name in ("alice", "bob"):
        r = await admin.post("/v1/users", json={"name": name})
        assert r.status_code == 201, r.text
        r = await admin.post("/v1/keys", json={"role": "member", "user_id": r.json()["id"]})
        assert r.status_code == 201, r.text
        clients.append(node.client(r.json()["api_key"]))
    alice, bob = clients

    def w(text: str) -> dict:
        return {"tool": "storage.write", "args": {"path": "notes.txt", "content": text}, "key": "same-key"}

    read = {"tool": "storage.read", "args": {"path": "notes.txt"}}
    results, _, _ = await _run(alice, w("alice's"), read)
    assert results[1]["ok"] == {"path": "notes.txt", "scope": "user", "content": "alice's", "size": 7}, results
    results, events, _ = await _run(bob, read, w("bob's"), read, {"tool": "storage.list", "args": {}},
                                    {"tool": "storage.read", "args": {"path": "notes.txt", "scope": "shared"}})
    assert results[0]["error"] == "storage.not_found", results
    assert [e.data["deduped"] for e in events if e.event == "tool.result"][1] is False  # bob's own key
    assert results[2]["ok"]["content"] == "bob's"
    assert [e["name"] for e in results[3]["ok"]["entries"]] == ["notes.txt"]
    assert results[4]["error"] == "storage.not_found"
    results, _, _ = await _run(alice, read)
    assert results[0]["ok"]["content"] == "alice's"
