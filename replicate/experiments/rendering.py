"""Frames as the book shows them: compact HTML tables that fit the page.

:func:`render_frame` turns any plain frame (an analysis table, the summary, the provenance appendix) into
one; :func:`html_table` wraps a pandas ``Styler`` the same way (the table pages' effect tables, built in
:mod:`.report`, use it). :class:`HtmlFragment` is HTML text that Jupyter and myst-nb render as HTML.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd


class HtmlFragment(str):
    """HTML text that Jupyter (and myst-nb's ``glue``) renders as HTML rather than as a string."""

    def _repr_html_(self) -> str:
        return str(self)


CELLS = {"selector": "td, th", "props": "padding: 0.15em 0.45em; text-align: right; font-size: 0.85em"}


def html_table(styler) -> str:
    """A Styler as a compact table in a wrapper that scrolls sideways rather than overflow the page."""
    return ('<div class="replicate-table-wrap" style="overflow-x: auto; max-width: 100%">'
            + styler.set_table_styles([CELLS], overwrite=False).set_table_attributes('class="replicate-table"').to_html() + "</div>")


def _decimals(values: pd.Series) -> int:
    """Decimals for a float column: three significant digits of its median magnitude, at most two places
    when that is 0.1 or more (AP 64.2, a spread 1.29 or 0.43, a time 0.00650 s, a count 1234); none for a
    column of several whole numbers (seeds 3, NaN where none)."""
    finite = values.abs()[values.notna() & values.abs().lt(math.inf)]
    if len(finite) > 1 and (finite == finite.round()).all():
        return 0
    finite = finite[finite != 0]
    if finite.empty:
        return 1
    median = finite.median()
    return min(2 if median >= 0.1 else 6, max(0, 2 - math.floor(math.log10(median))))


def _displayed(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as :func:`render_frame` shows it: a named or labelled index (row names, not positions) as
    leading columns; yes/no for booleans (``None`` beside them: missing)."""
    if any(name is not None for name in frame.index.names) or not pd.api.types.is_integer_dtype(frame.index.dtype):
        unnamed = frame.index.nlevels == 1 and frame.index.name is None and "index" not in frame.columns
        frame = frame.reset_index().rename(columns={"index": ""} if unnamed else {})
    out = frame.copy()
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_bool_dtype(values) or (
                values.dtype == object and values.notna().any()
                and all(isinstance(v, (bool, np.bool_)) for v in values if v is not None and v == v)):
            out[column] = [("yes" if v else "no") if isinstance(v, (bool, np.bool_)) else None for v in values]
    return out


def _significant(value: float) -> str:
    """Three significant digits, whole numbers from 100 up (with thousands separators): 0.0266, 6.50, 10,365."""
    if value != value:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:#.3g}".rstrip(".")


def render_frame(frame: pd.DataFrame, collapsed: str = "", decimals: int | None = None, caption: str = "",
                 significant: tuple[str, ...] = ()) -> HtmlFragment:
    """A plain frame as a compact HTML table that fits the page: small type, no index, cells and headers
    HTML-escaped, text columns left-aligned (long ones kept at least 10em wide rather than wrapped a word a
    line, short ones unbroken), each float column to three significant digits of its median (:func:`_decimals`),
    a missing value as "—", booleans as yes/no, a named index as leading columns (:func:`_displayed`); ``decimals`` fixes the places of every float column;
    ``caption`` above it; the columns named in ``significant`` (times over orders of magnitude) to three
    significant digits per value (:func:`_significant`); inside a ``<details>`` element titled ``collapsed`` when that is given."""
    frame = _displayed(frame)
    styles = [CELLS]
    for i, column in enumerate(frame.columns):
        if pd.api.types.is_numeric_dtype(frame[column]):
            continue
        longest = max((len(str(v)) for v in frame[column]), default=0)
        props = "text-align: left" + ("; min-width: 10em" if longest > 30 else "; white-space: nowrap" if longest <= 16
                                      else "")
        styles.append({"selector": f"td.col{i}, th.col{i}", "props": props})
    styler = frame.style.format(escape="html", na_rep="—").format_index(escape="html", axis=1).hide(axis="index")
    for column in frame.columns:
        if column in significant:
            styler = styler.format(_significant, subset=[column], na_rep="—")
        elif pd.api.types.is_float_dtype(frame[column]):
            places = decimals if decimals is not None else _decimals(frame[column])
            styler = styler.format(precision=places, subset=[column], na_rep="—")
    if caption:
        styler = styler.set_caption(html.escape(caption))
    table = html_table(styler.set_table_styles(styles[1:], overwrite=False))
    if collapsed:
        table = f"<details><summary>{html.escape(collapsed)}</summary>{table}</details>"
    return HtmlFragment(table)
