"""Frames as the book shows them: compact HTML tables, their numbers, labels and gaps."""

import pandas as pd

from replicate.experiments import rendering


def test_render_frame_is_a_compact_table_with_text_on_the_left():
    frame = pd.DataFrame({"claim": ["a <b>", "c"], "seeds": [2, 3]})
    html = str(rendering.render_frame(frame))
    assert html.count("<tr>") == 3 and "a &lt;b&gt;" in html and "font-size: 0.85em" in html
    assert 'class="replicate-table"' in html
    # the text column's left alignment outranks the table-wide right alignment (a class more in its selector)
    assert "td.col0 {" in html and "td.col1" not in html and "white-space: nowrap" in html
    wide = str(rendering.render_frame(pd.DataFrame({"claim": ["x" * 31], "seeds": [2]})))
    assert "min-width: 10em" in wide
    assert ">0<" not in html  # no index column
    numbers = str(rendering.render_frame(pd.DataFrame({"AP": [64.25, None], "s": [0.0065, 0.01234], "n": [1234.4, 1e4]})))
    assert ">64.2<" in numbers and ">—<" in numbers  # three significant digits of the column's median
    assert ">0.00650<" in numbers and ">0.01234<" in numbers and ">1234<" in numbers and ">10000<" in numbers
    # an analysis frame: its named index (the row names) shown first, whole numbers bare, yes/no, "—" for gaps
    analysis = pd.DataFrame({"seeds": [3.0, 5.0], "met": [True, None], "sd": [1.29, 0.431]},
                            index=pd.Index(["RetinaNet", "Spearman rho"], name="row"))
    shown = str(rendering.render_frame(analysis))
    assert shown.index(">row<") < shown.index(">seeds<") and ">RetinaNet<" in shown and ">Spearman rho<" in shown
    assert ">3<" in shown and ">3.0<" not in shown and ">yes<" in shown and "None" not in shown
    assert ">1.29<" in shown and ">0.43<" in shown and shown.count(">—<") == 1  # at most 2 places from 0.1 up
    assert ">2.00<" in str(rendering.render_frame(pd.DataFrame({"margin": [2.0]})))  # one value: no whole-number rule
    captioned = str(rendering.render_frame(analysis, caption="rho <0.7>"))
    assert "<caption>rho &lt;0.7&gt;</caption>" in captioned
    assert ">no<" in str(rendering.render_frame(pd.DataFrame({"met": [False, True]})))
    labelled = str(rendering.render_frame(pd.DataFrame({"AP": [57.1]}, index=["RetinaNet"])))  # unnamed labels
    assert ">RetinaNet<" in labelled and ">index<" not in labelled
    assert ">1.290<" in str(rendering.render_frame(analysis, decimals=3))  # fixed places
    folded = str(rendering.render_frame(frame, collapsed="All claims"))
    assert folded.startswith("<details><summary>All claims</summary>") and folded.endswith("</details>")


def test_significant_columns_keep_three_digits_per_value():
    frame = pd.DataFrame({"ours ms": [0.0266, 6.5, 10365.2, float("nan")], "speed-up": [1.0, 2.0, 3.0, 4.0]})
    shown = str(rendering.render_frame(frame, significant=("ours ms",)))
    for text in (">0.0266<", ">6.50<", ">10,365<", ">—<"):
        assert text in shown, text
    assert rendering._significant(100.4) == "100" and rendering._significant(12.0) == "12.0"
