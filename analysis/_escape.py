"""Escape values that come from data for the medium they are printed in.

Results folders are data, not code: a hardware name, a study name or an error message may hold
rich markup, terminal control sequences, Markdown, HTML or a spreadsheet formula. Every writer in
``analysis`` passes such values through one of these functions, so they print literally.

- :func:`terminal`: control characters (ESC, CR, BEL, bidi overrides ...) as visible escapes.
  Pass the result to rich as a ``Text`` (never as a markup string), or through :func:`rich_markup`.
- :func:`markdown`: inline Markdown and raw HTML neutralised (for table cells and list items).
- :func:`html_text`: HTML text and attribute values.
- :func:`plotly_label`: plotly.js reads trace names, titles and tick labels as pseudo-HTML.
- :func:`matplotlib_label`: matplotlib reads ``$...$`` as mathtext.
- :func:`csv_cell` / :func:`csv_frame`: formula prefixes for spreadsheets.
- :func:`redact_uris`: credentials in URIs (``s3://KEY:SECRET@bucket``, ``?X-Amz-Signature=``)
  before a path the user gave is printed.
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "csv_cell",
    "csv_frame",
    "html_text",
    "markdown",
    "matplotlib_label",
    "plotly_label",
    "redact_uris",
    "rich_markup",
    "terminal",
]

# C0 controls, DEL, C1 controls, and the Unicode bidi controls that reorder what a terminal shows
# ("Trojan Source"): each is replaced by its Python escape so it is visible and inert.
# Also zero-width characters, line/paragraph separators and the BOM, which hide or split text.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2069\ufeff]")
_MD_PUNCT = re.compile(r"([\\`*\[\]|~$])")  # $: GitHub renders $...$ as math
# An underscore opens or closes emphasis only at a word boundary (GFM), so ``latency_ms`` stays.
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_CSV_FORMULA = ("=", "+", "-", "@", "\t", "\r")
# What GitHub autolinks: scheme://, www., user@host.tld (the zero-width space goes before the mark).
_MD_AUTOLINK = re.compile(r"(?i)(?<=[a-z0-9+.-])(?=://)|(?<=\bwww)(?=\.)|(?<=[\w.+-])(?=@[\w-]+\.)")
# A pasted password may hold '/', '?', '#', quotes or spaces: the userinfo is taken to run to the
# last '@' on the line. That hides too much when a path holds an '@', never too little.
_URL_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^\n]*@")
_SECRET_VALUE = re.compile(
    r"(?<![\w.-])((?:[\w.-]*(?:pass|pwd|secret|token|credential|signature|key|auth|jwt|bearer|session)[\w.-]*"
    r"|sig|sas)=)[^&\s#'\"]+", re.I)


def _visible(m: re.Match[str]) -> str:
    return m.group(0).encode("unicode_escape").decode("ascii")


def redact_uris(text: object) -> str:
    """Hide the whole userinfo of every URL in ``text`` and every secret-looking query value.

    Stricter than the sweep's ``redact`` (which keeps the user name): analysis only prints the
    paths it was given, so when in doubt more is hidden, never less.

    >>> redact_uris("cannot open 's3://AKIA:se/cr@t@bucket/out?region=eu&X-Amz-Signature=f0'")
    "cannot open 's3://***@bucket/out?region=eu&X-Amz-Signature=***'"
    >>> redact_uris("runs/digits")
    'runs/digits'
    """
    text = _SECRET_VALUE.sub(lambda m: f"{m.group(1)}***", str(text))
    return _URL_USERINFO.sub(lambda m: f"{m.group(1)}***@", text)


def terminal(value: object) -> str:
    """``str(value)`` with every control character shown as its escape.

    >>> terminal("cpu\\x1b[31m red\\r")
    'cpu\\\\x1b[31m red\\\\r'
    >>> print(terminal("a\\tb\\u202ec"))
    a\\tb\\u202ec
    """
    return _CONTROL.sub(_visible, str(value))


def rich_markup(value: object) -> str:
    """:func:`terminal`, then rich's markup escape: safe inside a rich markup string.

    >>> rich_markup("[/bold]x [link=http://evil]y[/link]")
    '\\\\[/bold]x \\\\[link=http://evil]y\\\\[/link]'
    """
    from rich.markup import escape

    return escape(terminal(value))


def markdown(value: object) -> str:
    """``str(value)`` safe inside a Markdown table cell or list item.

    Control characters become visible escapes (so a newline cannot end the row), Markdown
    punctuation that builds links, code, emphasis, math or table cells is backslash-escaped,
    ``< > &`` become HTML entities so raw HTML never reaches the rendered page, and what GitHub
    would turn into a link by itself (``http://``, ``www.``, ``me@host.tld``) gets an invisible
    zero-width space that breaks the pattern.

    >>> markdown("<script>alert(1)</script>")
    '&lt;script&gt;alert(1)&lt;/script&gt;'
    >>> markdown("[x](http://evil) | `y` *z* _w_ latency_ms")
    '\\\\[x\\\\](http&#8203;://evil) \\\\| \\\\`y\\\\` \\\\*z\\\\* \\\\_w\\\\_ latency_ms'
    >>> markdown("www.evil.example or me@evil.example")
    'www&#8203;.evil.example or me&#8203;@evil.example'
    >>> markdown("$x$ a\\nb")
    '\\\\$x\\\\$ a\\\\\\\\nb'
    """
    s = _MD_PUNCT.sub(r"\\\1", terminal(value))
    s = _MD_UNDERSCORE.sub(r"\\_", s)
    s = html.escape(s, quote=False)
    # GitHub links bare URLs, www. names and e-mail addresses by itself: a zero-width space
    # (as an entity, so it survives as text) breaks each pattern and shows nothing.
    return _MD_AUTOLINK.sub("&#8203;", s)


def html_text(value: object) -> str:
    """``str(value)`` safe as HTML text or a quoted attribute value.

    >>> html_text('<img src=x onerror="alert(1)">')
    '&lt;img src=x onerror=&quot;alert(1)&quot;&gt;'
    """
    return html.escape(str(value), quote=True)


def plotly_label(value: object) -> str:
    """``str(value)`` for a plotly trace name, title or tick label.

    plotly.js renders a subset of HTML there (``<a href>``, ``<b>``, ``<br>``) and decodes
    entities, so escaping makes the label show literally.

    >>> plotly_label('<a href="http://evil">x</a>')
    '&lt;a href=&quot;http://evil&quot;&gt;x&lt;/a&gt;'
    """
    return html.escape(str(value), quote=True)


def matplotlib_label(value: object) -> str:
    """``str(value)`` for a matplotlib label: ``$`` would start mathtext (and can fail to parse).

    >>> matplotlib_label("cost $\\\\frac{")
    'cost \\\\$\\\\frac{'
    """
    return str(value).replace("$", r"\$")


def csv_cell(value: Any) -> Any:
    """Prefix a string that a spreadsheet would run as a formula with ``'``; others unchanged.

    Only strings are touched: a negative number is a number, not a formula.

    >>> csv_cell("=HYPERLINK(\\"http://evil\\")")
    '\\'=HYPERLINK("http://evil")'
    >>> csv_cell("-1+2"), csv_cell(-1.5), csv_cell("cpu")
    ("'-1+2", -1.5, 'cpu')
    """
    if isinstance(value, str) and value.startswith(_CSV_FORMULA):
        return "'" + value
    return value


def csv_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with :func:`csv_cell` applied to every string cell and column name.

    >>> import pandas as pd
    >>> csv_frame(pd.DataFrame({"@h": ["=1+1", "x"], "n": [-1, 2]})).to_dict("list")
    {"'@h": ["'=1+1", 'x'], 'n': [-1, 2]}
    """
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or str(out[col].dtype) in ("string", "str"):
            out[col] = out[col].map(csv_cell)
    out.columns = [csv_cell(str(c)) for c in out.columns]
    return out
