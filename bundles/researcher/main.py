"""Research a question: fetch the allowed URLs it names, keep snippets in the KB, answer with citations.

1. every URL in the input is fetched with ``ctx.http.get``; one the policy or
   the egress guard refuses is reported and skipped, never fatal;
2. each page is cut into snippets stored with ``kb.add`` (doc id = URL#n, so a
   page fetched again replaces its snippets instead of piling up copies);
3. ``kb.search`` finds the best snippets for the question - from this run and
   from earlier ones, since the knowledge base belongs to the tenant;
4. the answer comes from ``llm.chat`` (streamed) when a provider is configured,
   else it is extractive: the best snippets, quoted; then a ``citation`` event
   per document used and a ``followups`` event.
"""

import textutil
from stockade_sdk import ToolError

MODEL = "openai/gpt-4.1-mini"
TOP = 4
REFUSED = {"policy.denied": "not allowed by the policy", "egress.blocked": "blocked by the egress guard"}
SYSTEM = (
    "Answer the question using only the numbered sources. Cite them like [1] or [2]. "
    "If the sources do not contain the answer, say so briefly."
)


async def fetch(ctx, url, texts):
    """Store the page's snippets (also into ``texts``: doc id -> full text); return a problem or None."""
    try:
        page = await ctx.http.get(url, timeout_s=15)
    except ToolError as exc:
        return REFUSED.get(exc.code, f"could not be fetched ({exc.code})")
    if not 200 <= page["status"] < 300:
        return f"answered HTTP {page['status']}"
    content_type = (page.get("headers") or {}).get("content-type", "")  # names arrive lower-cased
    title, text = textutil.page_text(page.get("body") or "", content_type)
    pieces = textutil.chunks(text)
    for i, piece in enumerate(pieces):
        r = await ctx.kb.add(piece, title=title or url, source=url, doc_id=textutil.doc_id(url, i))
        texts[r["doc_id"]] = piece
    return None if pieces else "had no text"


async def llm_answer(ctx, question, hits, texts):
    sources = "\n\n".join(
        f"[{n}] {h.get('title') or h['doc_id']}\n{texts.get(h['doc_id']) or h['snippet']}" for n, h in enumerate(hits, 1)
    )
    prompt = f"Sources:\n\n{sources}\n\nQuestion: {question}"
    try:
        await ctx.llm.chat(prompt, model=MODEL, system=SYSTEM, max_tokens=800)  # streams to the answer channel
        return True
    except ToolError as exc:
        if exc.code in ("llm.unconfigured", "policy.denied"):
            return False
        raise


async def extractive_answer(ctx, hits):
    await ctx.answer("Here is what the sources say:\n\n")
    for n, h in enumerate(hits[:3], 1):
        await ctx.answer(f"[{n}] {h['snippet']}\n\n")


async def followups(ctx, question, hits, used_llm):
    if used_llm:
        try:
            r = await ctx.llm.chat(
                f"Question: {question}\nSuggest three short follow-up questions, one per line, nothing else.",
                model=MODEL, stream=False, max_tokens=150,
            )
            lines = [ln.strip(" -*0123456789.)\t") for ln in r["text"].splitlines()]
            asked = [ln for ln in lines if ln.endswith("?")][:3]
            if len(asked) >= 2:
                return asked
        except ToolError:
            pass
    topic = " ".join(textutil.keywords(question)[:4]) or "this"
    title = (hits[0].get("title") or hits[0]["doc_id"]) if hits else "the first source"
    return [f"What else is known about {topic}?", f"Can you summarise {title}?",
            f"Which sources disagree about {topic}?"]


async def main(ctx):
    question, urls = textutil.split_question(ctx.input)
    question = question or ctx.input.strip()
    if not question:
        await ctx.answer("Ask a question, optionally with the URLs to read, e.g. "
                         "'What does this page say about pricing? https://example.com/pricing'.")
        return
    skipped, texts = {}, {}
    for url in urls:
        await ctx.status(f"reading {url}")
        problem = await fetch(ctx, url, texts)
        if problem:
            skipped[url] = problem
            await ctx.status(f"skipped {url}: {problem}")
            await ctx.emit("custom", name="source.skipped", data={"url": url, "reason": problem})
    await ctx.status("searching the knowledge base")
    found = await ctx.kb.search(textutil.search_query(question), limit=TOP)
    hits = found.get("results") or []
    if skipped:
        await ctx.answer(f"(Not used: {'; '.join(f'{u} ({why})' for u, why in skipped.items())}.)\n\n")
    used_llm = False
    if not hits:
        await ctx.answer("I found nothing about that in the knowledge base. Add URLs the policy allows and ask again.")
    else:
        used_llm = await llm_answer(ctx, question, hits, texts)
        if not used_llm:
            await extractive_answer(ctx, hits)
        for h in hits:
            await ctx.citation(h["doc_id"], title=h.get("title") or "", source=h.get("source") or "",
                               snippet=h.get("snippet") or "")
    await ctx.emit("custom", name="research", data={"urls": urls, "skipped": skipped, "documents": len(hits)})
    await ctx.followups(await followups(ctx, question, hits, used_llm))
