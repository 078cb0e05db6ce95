"""Plain-text helpers for the researcher: URLs in a question, HTML to text, snippets, search terms."""

import html
import re
from html.parser import HTMLParser
from urllib.parse import quote

URL = re.compile(r"https?://[^\s<>\"']+")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*")
_STOP = frozenset(
    "a an and are as at be but by can could did do does for from had has have how i in is it its "
    "me my of on or our should so than that the their them then there these they this to was we "
    "were what when where which who whom why will with would you your about into tell please "
    "explain describe give show find according source sources page".split()
)
_SKIP = {"script", "style", "noscript", "template", "svg", "head"}
_BLOCK = {"p", "div", "section", "article", "li", "ul", "ol", "br", "h1", "h2", "h3", "h4", "h5", "h6",
          "tr", "table", "pre", "blockquote", "header", "footer", "main", "title"}


def split_question(text):
    """(question without the URLs, the URLs in order, each once)."""
    urls = []
    for u in URL.findall(text):
        u = u.rstrip(".,;:!?)]}")
        if u not in urls:
            urls.append(u)
    question = " ".join(URL.sub(" ", text).split())
    return question, urls


class _Text(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.title, self._skip, self._in_title = [], "", 0, False

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP:
            self._skip += 1
        if tag == "title":
            self._in_title = True
        if tag in _BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in _SKIP and self._skip:
            self._skip -= 1
        if tag == "title":
            self._in_title = False
        if tag in _BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(data)


def page_text(body, content_type):
    """(title, text) of a fetched page; non-HTML bodies are taken as they are."""
    if "html" not in (content_type or "").lower() and not body.lstrip()[:15].lower().startswith(("<!doctype", "<html")):
        return "", body
    p = _Text()
    p.feed(body)
    p.close()
    return " ".join(html.unescape(p.title).split()), "".join(p.parts)


def chunks(text, size=900, limit=8):
    """Paragraph-aligned pieces of about ``size`` characters, at most ``limit`` of them."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    out, cur = [], ""
    for para in filter(None, paragraphs):
        while len(para) > size:  # one huge paragraph: cut it at a space
            cut = para.rfind(" ", 0, size)
            cut = cut if cut > size // 2 else size
            out.append((cur + " " + para[:cut]).strip() if cur else para[:cut])
            cur, para = "", para[cut:].strip()
        if cur and len(cur) + len(para) + 1 > size:
            out.append(cur)
            cur = ""
        cur = (cur + " " + para).strip()
    if cur:
        out.append(cur)
    return out[:limit]


def keywords(question, limit=12):
    words = []
    for w in _WORD.findall(question.lower()):
        w = w.strip("'-")
        if len(w) > 2 and w not in _STOP and w not in words:
            words.append(w)
    return words[:limit]


def search_query(question):
    """Any of the question's keywords (the KB's web-search syntax ANDs bare words; a question needs OR)."""
    return " or ".join(keywords(question)) or question.strip()


def doc_id(url, n):
    """A knowledge-base id for snippet ``n`` of ``url``: printable ASCII without spaces, at most 200 characters."""
    safe = quote(url, safe="!#$&'()*+,-./:;=?@[]_~%")[:180]
    return f"{safe}#{n}"
