"""report.html: one parseable, self-contained page with the comparison's tables, numbers and plots."""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

from mtl_train.html_report import HtmlImage, HtmlParagraph, HtmlSection, HtmlTable, html_page
from mtl_train.report import report
from test_report import add_gradient_diagnostics, quiet_console, write_two_task_sweep

PNG = b"\x89PNG\r\n\x1a\n"


class PageParser(HTMLParser):
    """Collects the page's links and image sources, the text of its table cells and of its paragraphs, and checks
    that every opened element (but the void ones) is closed in order. A line break reads as a space."""

    VOID = {"meta", "img", "br", "wbr", "hr", "link"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.urls: list[str] = []
        self.cells: list[str] = []
        self.paragraphs: list[str] = []
        self.text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value or "" for name, value in attrs if name in ("src", "href")]
        if tag == "br" and self.text is not None:
            self.text.append(" ")
        if tag not in self.VOID:
            self.open.append(tag)
        if tag in ("td", "p"):
            self.text = []

    def handle_endtag(self, tag: str) -> None:
        assert self.open.pop() == tag
        if tag in ("td", "p"):
            (self.cells if tag == "td" else self.paragraphs).append("".join(self.text or []))
            self.text = None

    def handle_data(self, data: str) -> None:
        if self.text is not None:
            self.text.append(data)


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    assert parser.open == []
    return parser


def test_a_page_escapes_its_strings_and_embeds_its_images() -> None:
    page = html_page("a <b> & c", ["from <dir>"], [
        HtmlSection("tasks <x>", [HtmlTable("t<1>", ["config"], [["weighting=<ew>"]]), HtmlParagraph("p & q"),
                                  HtmlImage("plot <1>", PNG)])])
    assert "<b>" not in page and "&lt;b&gt; &amp; c" in page and "weighting=&lt;ew&gt;" in page
    parsed = parse(page)
    assert parsed.cells == ["weighting=<ew>"] and "p & q" in parsed.paragraphs
    data_uris = [url for url in parsed.urls if url.startswith("data:image/png;base64,")]
    assert [base64.b64decode(url.split(",", 1)[1]) for url in data_uris] == [PNG]
    links = [url for url in parsed.urls if url.startswith("#")]
    assert len(links) == 3  # the section, its table and its image in the contents
    assert all(f'id="{link[1:]}"' in page for link in links)


def test_the_sweep_report_page_has_the_tables_numbers_and_plots(tmp_path: Path) -> None:
    write_two_task_sweep(tmp_path)
    add_gradient_diagnostics(tmp_path / "0", -0.5, 1.0, [["rhythm"], ["denoise"]])
    overrides = tmp_path / "3" / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text().replace("weighting=gradnorm", "weighting=<gradnorm>"))
    report([tmp_path], tmp_path / "out", quiet_console(), html=True)
    page = (tmp_path / "out" / "report.html").read_text()
    parsed = parse(page)
    assert not any(url.startswith(("http:", "https:", "//")) for url in parsed.urls)
    assert "<script" not in page
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert [p.stem for p in pngs] == ["gradient_cosines_comparison", "losses_comparison", "metric_curves", "tradeoff",
                                      "weights_comparison"]
    embedded = sorted(base64.b64decode(url.split(",", 1)[1]) for url in parsed.urls if url.startswith("data:"))
    assert embedded == sorted(p.read_bytes() for p in pngs)
    cells = parsed.cells
    row = cells.index("weighting=ew")
    # config, seeds, front, denoise/mse, denoise/psnr, rhythm/accuracy, ...: EW's seeds have accuracy 0.8 and 1.0
    assert cells[row:row + 6] == ["weighting=ew", "2", "✓", "20.0000 ± 0.0000", "20.0000 ± 0.0000",
                                  "0.9000 ± 0.1414"]
    assert "0.9000<br>± 0.1414" in page  # mean and std on two lines
    assert "weighting=<gradnorm>" in cells and "weighting=&lt;gradnorm&gt;" in page
    assert any(p.startswith("Hypervolume of the front: 0.815,") for p in parsed.paragraphs)
    diagnostics = cells.index("weighting=ew", row + 1)  # EW's row in the gradient diagnostics table
    assert cells[diagnostics:diagnostics + 6] == ["weighting=ew", "1", "1.000", "2", "4", "rhythm | denoise (1 run)"]
