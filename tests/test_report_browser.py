"""The HTML report checked in a real browser: headless Chromium (issue 11, item 7).

The page is built by the CLI (``kvbench report RESULT --html PAGE``) from the committed
CPU-fallback result, which holds every benchmark and so every kind of plot. The contract
it is checked against:

* ``<section id="headline">`` (a headline summary) comes before any other section, and
  before any plot; it starts within the first screen (``FIRST_SCREEN`` px at
  ``WIDTH`` px wide);
* every plot is one ``<img>`` inside ``<figure class="plot">``, its src a
  ``data:image/png;base64,...`` URI, and every ``<img>`` on the page is such a plot;
* the page loads nothing: no network URL in a URL attribute or in CSS, nothing in the
  browser's resource timing, no request of the page's in Chromium's net log.

Three passes: the HTML as text (no browser needed); the page in Chromium with a probe
script injected into a copy (is each element laid out, styled visible, and the topmost
element at its centre; did each image decode); and a screenshot of the unmodified page,
where the headline's box must be painted and each plot's box must show that plot's own
pixels. The last two tests feed deliberately broken pages through the same checks, so a
check that stops seeing something (a new Chromium, a typo) cannot pass vacuously.

Run: ``python3 -m pytest tests/test_report_browser.py`` (~7 s on the 2-core CI VM).

Without Chromium the browser tests skip with the reason; with ``KVBENCH_REQUIRE_CHROMIUM=1``
(``.ci/run`` sets it, after installing the Debian package ``chromium``) they fail instead.
The screenshot is kept in pytest's tmp folder (its path is in every failure message)."""

from __future__ import annotations

import base64
import binascii
import html as htmllib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

RESULT = Path(__file__).resolve().parent.parent / "results" / "cpu-fallback-ci-vm.json"
#: the window the page is judged in (CSS px; the device scale factor is forced to 1, so
#: a CSS px is a screenshot pixel); FIRST_SCREEN: a laptop's first screen
WIDTH, FIRST_SCREEN = 1280, 900
#: a plot drawn smaller than this (CSS px, either side) is not readable
MIN_PLOT_PX = 64
#: the screenshot is as tall as the page, up to this (Chromium renders 30000 px in ~5 s
#: on the CI VM); plots below it are checked by the probe but not in pixels
SHOT_MAX_PX = 20000
#: a plot's box must differ from its own image (both shrunk to SMALL px wide) by at most
#: this fraction of how much a blank box would differ: 0 when drawn at its natural size
#: (measured), a few percent when the browser scales it, ~1 when it is hidden or
#: covered, above 1 when another picture is there
PIXEL_TOL = 0.25
SMALL = 256
TIMEOUT_S = 60
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PNG_URI = "data:image/png;base64,"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def chromium_binary() -> str:
    """The Chromium on PATH; skips (or, under KVBENCH_REQUIRE_CHROMIUM, fails) without one."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    why = f"Chromium is not installed (none of {', '.join(BROWSERS)} on PATH; apt-get install chromium)"
    if os.environ.get("KVBENCH_REQUIRE_CHROMIUM", "") not in ("", "0"):
        pytest.fail(f"{why}, and KVBENCH_REQUIRE_CHROMIUM is set (CI installs it)")
    pytest.skip(why)


# --- the HTML as text ---------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
        "source", "track", "wbr"}
#: attributes whose value the browser fetches or navigates to
URL_ATTRS = {"src", "href", "srcset", "imagesrcset", "poster", "data", "action", "formaction",
             "background", "cite", "longdesc", "manifest", "ping", "xlink:href", "codebase"}
NETWORK_URL = re.compile(r"^\s*(?:(?:https?|wss?|ftp):|//)", re.I)
CSS_NETWORK = re.compile(r"url\(\s*['\"]?\s*(?:(?:https?|wss?|ftp):|//)|@import", re.I)


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: "Node | None"):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    @property
    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()

    def ancestors(self):
        n = self.parent
        while n is not None:
            yield n
            n = n.parent

    def descendants(self):
        for c in self.children:
            yield c
            yield from c.descendants()

    def __str__(self) -> str:
        shown = {k: v if len(v) <= 40 else v[:37] + "..." for k, v in self.attrs.items()}
        return f"<{self.tag}{''.join(f' {k}={v!r}' for k, v in shown.items())}>"


class Tree(HTMLParser):
    """Elements in document order with their parents; the text of <style> elements."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#document", {}, None)
        self.nodes: list[Node] = []
        self.styles: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs, void=False):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        self.nodes.append(node)
        if not void and tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs, void=True)

    def handle_endtag(self, tag):
        for n in [self.cur, *self.cur.ancestors()]:
            if n.tag == tag:
                self.cur = n.parent
                return

    def handle_data(self, data):
        if self.cur.tag == "style":
            self.styles.append(data)


def is_plot(n: Node) -> bool:
    return n.tag == "figure" and "plot" in n.classes


def plot_images(tree: Tree) -> list[Node]:
    """Every <img> inside a figure.plot, in document order (querySelectorAll's order)."""
    return [n for n in tree.nodes if n.tag == "img" and any(map(is_plot, n.ancestors()))]


def png_of(img: Node) -> bytes | None:
    src = img.attrs.get("src", "")
    if not src.startswith(PNG_URI):
        return None
    try:
        data = base64.b64decode(src[len(PNG_URI):], validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if data.startswith(PNG_MAGIC) else None


def static_problems(text: str) -> list[str]:
    """What the HTML text breaks of the contract (see the module docstring)."""
    tree, out = Tree(text), []
    heads = [n for n in tree.nodes if n.attrs.get("id") == "headline"]
    sections = [n for n in tree.nodes if n.tag == "section"]
    figures = [n for n in tree.nodes if is_plot(n)]
    if len(heads) != 1:
        out.append(f'expected one element with id="headline", found {len(heads)}')
    elif heads[0].tag != "section":
        out.append(f"#headline is {heads[0]}, not a <section>")
    elif sections[0] is not heads[0]:
        out.append(f"#headline is not the first <section>: {sections[0]} comes before it")
    elif figures and tree.nodes.index(figures[0]) < tree.nodes.index(heads[0]):
        out.append("a figure.plot comes before #headline")
    if not figures:
        out.append('no <figure class="plot"> on the page (the result has plots)')
    for k, f in enumerate(figures, 1):
        imgs = [n for n in f.descendants() if n.tag == "img"]
        if len(imgs) != 1:
            out.append(f"figure.plot {k} holds {len(imgs)} <img>, not one")
    for n in tree.nodes:
        if n.tag == "img":
            if not any(map(is_plot, n.ancestors())):
                out.append(f"{n} is not inside a figure.plot")
            if png_of(n) is None:
                out.append(f"{n}: src is not a {PNG_URI}... URI holding a PNG")
        for k, v in n.attrs.items():
            urls = [u.split()[0] for u in v.split(",") if u.strip()] if k.endswith("srcset") else [v]
            if k in URL_ATTRS and any(NETWORK_URL.match(u) for u in urls):
                out.append(f"{n}: {k} is a network URL")
        if CSS_NETWORK.search(n.attrs.get("style", "")):
            out.append(f"{n}: its style fetches (url() of a network URL, or @import)")
        if n.tag == "meta" and n.attrs.get("http-equiv", "").lower() == "refresh":
            out.append(f"{n}: a refresh navigates away")
    for css in tree.styles:
        m = CSS_NETWORK.search(css)
        if m:
            out.append(f"a <style> fetches: ...{css[max(0, m.start() - 30):m.end() + 40]}...")
    return out


# --- the page in Chromium --------------------------------------------------------------

#: Run on `load` in a copy of the page; measures before scrolling, then scrolls each
#: element to the window's centre and asks which element is topmost there. Writes its
#: verdict as JSON into <pre id="kvbench-probe"> at the end of the body, which
#: --dump-dom then prints.
PROBE = r"""
addEventListener('load', () => {
  const desc = e => !e ? 'nothing' : e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
    + (typeof e.className === 'string' && e.className.trim()
       ? '.' + e.className.trim().split(/\s+/).join('.') : '');
  const hiddenBy = el => {
    for (let e = el; e; e = e.parentElement) {
      const s = getComputedStyle(e);
      if (s.display === 'none') return 'display:none on ' + desc(e);
      if (parseFloat(s.opacity) === 0) return 'opacity:0 on ' + desc(e);
      if (s.contentVisibility === 'hidden') return 'content-visibility:hidden on ' + desc(e);
    }
    const v = getComputedStyle(el).visibility;
    return v === 'visible' ? null : 'visibility:' + v;
  };
  const content = el => {  // the content box, in page coordinates (CSS px)
    const r = el.getBoundingClientRect(), s = getComputedStyle(el), px = p => parseFloat(s[p]) || 0;
    const l = px('borderLeftWidth') + px('paddingLeft'), t = px('borderTopWidth') + px('paddingTop');
    return [r.left + scrollX + l, r.top + scrollY + t,
            r.width - l - px('borderRightWidth') - px('paddingRight'),
            r.height - t - px('borderBottomWidth') - px('paddingBottom')];
  };
  const border = el => { const r = el.getBoundingClientRect(); return [r.left + scrollX, r.top + scrollY, r.width, r.height]; };
  const covered = el => {
    el.scrollIntoView({block: 'center', inline: 'center'});
    const r = el.getBoundingClientRect();
    const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    return hit && (hit === el || el.contains(hit)) ? null : desc(hit);
  };
  const de = document.documentElement, h = document.getElementById('headline');
  const imgs = [...document.querySelectorAll('figure.plot img')];
  const v = {
    window: [innerWidth, innerHeight], page: [de.scrollWidth, de.scrollHeight],
    figures: document.querySelectorAll('figure.plot').length,
    resources: performance.getEntriesByType('resource').map(e => e.name),
    headline: h && {box: border(h), hidden: hiddenBy(h), text: h.innerText.trim().length},
    plots: imgs.map(i => ({box: content(i), hidden: hiddenBy(i), alt: i.alt, complete: i.complete,
                           natural: [i.naturalWidth, i.naturalHeight]})),
  };
  if (h) v.headline.covered = covered(h);
  imgs.forEach((i, k) => { v.plots[k].covered = covered(i); });
  scrollTo(0, 0);
  const pre = document.createElement('pre');
  pre.id = 'kvbench-probe';
  pre.textContent = JSON.stringify(v);
  document.body.append(pre);
});
"""
VERDICT = re.compile(r'<pre id="kvbench-probe">(.*?)</pre>', re.S)


def run_chromium(browser: str, page: Path, work: Path, *args: str) -> str:
    """Chromium headless on ``page`` (a file), with a fresh profile under ``work`` (removed
    after); returns stdout. DNS resolves nothing (--host-resolver-rules), so a request the
    page makes is logged but goes nowhere."""
    profile = work / "profile"
    cmd = [browser, "--headless",
           "--no-sandbox",  # Chromium refuses to start as root with its sandbox (CI is root)
           "--disable-gpu", "--disable-dev-shm-usage",  # containers have a 64 MB /dev/shm
           "--hide-scrollbars", "--force-device-scale-factor=1",
           "--no-first-run", "--no-default-browser-check", "--disable-extensions",
           # Chromium's own traffic (time queries, component updates): less to wade through
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-features=NetworkTimeServiceQuerying,Translate,OptimizationHints,MediaRouter",
           "--host-resolver-rules=MAP * ~NOTFOUND",
           f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # our own session: the browser and its children
        proc.communicate()
        pytest.fail(f"Chromium did not finish in {TIMEOUT_S} s: {' '.join(cmd)}")
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if proc.returncode != 0:
        noise = ("dbus", "unexpected operator")  # no system bus in CI; Debian's launcher script
        tail = "\n".join(line for line in err.splitlines() if not any(w in line for w in noise))
        pytest.fail(f"Chromium exited {proc.returncode}: {' '.join(cmd)}\n{tail[-3000:]}")
    return out


def page_requests(netlog: Path) -> list[str]:
    """URLs the page asked for, from Chromium's net log (--log-net-log). A request of the
    page's carries its origin as initiator ("null" or "file://" for a file) and its site in
    the network isolation key; Chromium's own carry "not an origin" and another site."""
    if not netlog.is_file():
        pytest.fail(f"Chromium wrote no net log ({netlog})")
    log = json.loads(netlog.read_text())
    start = log.get("constants", {}).get("logEventTypes", {}).get("URL_REQUEST_START_JOB")
    if start is None:
        pytest.fail(f"{netlog} names no URL_REQUEST_START_JOB event: has this Chromium renamed it?")
    out = []
    for e in log["events"]:
        p = e.get("params", {})
        if e["type"] != start or "url" not in p:
            continue
        if p.get("initiator") == "not an origin" and "file://" not in p.get("network_isolation_key", ""):
            continue
        out.append(p["url"])
    return out


def probe_problems(v: dict, n_plots: int) -> list[str]:
    """What the probe's verdict breaks: #headline and every plot laid out, visible, on top."""
    out = []
    h = v["headline"]
    if h is None:
        out.append("the browser finds no #headline")
    else:
        x, y, w, hh = h["box"]
        if w < 1 or hh < 1:
            out.append(f"#headline is laid out {w:.0f}x{hh:.0f} px")
        if h["hidden"]:
            out.append(f"#headline is hidden: {h['hidden']}")
        if h["covered"]:
            out.append(f"#headline is covered at its centre by {h['covered']}")
        if not h["text"]:
            out.append("#headline shows no text")
        if y >= FIRST_SCREEN:
            out.append(f"#headline starts {y:.0f} px down, below the first {FIRST_SCREEN} px")
    if n_plots == 0 or v["figures"] == 0:
        out.append("the browser finds no figure.plot")
    if len(v["plots"]) != n_plots:
        out.append(f"the browser finds {len(v['plots'])} plot images, the HTML has {n_plots}")
    for k, p in enumerate(v["plots"], 1):
        name = f"plot {k} ({p['alt']!r})"
        x, y, w, hh = p["box"]
        if not p["complete"] or min(p["natural"]) < 1:
            out.append(f"{name} did not load and decode ({p['natural'][0]}x{p['natural'][1]} px)")
        if w < MIN_PLOT_PX or hh < MIN_PLOT_PX:
            out.append(f"{name} is drawn {w:.0f}x{hh:.0f} px, under {MIN_PLOT_PX} px")
        if x < -0.5 or x + w > v["window"][0] + 0.5:
            out.append(f"{name} spans x {x:.0f}..{x + w:.0f} px, outside the {v['window'][0]} px window")
        if p["hidden"]:
            out.append(f"{name} is hidden: {p['hidden']}")
        if p["covered"]:
            out.append(f"{name} is covered at its centre by {p['covered']}")
    out += [f"the page loaded {u[:100]} (resource timing)" for u in v["resources"]
            if not u.startswith("data:")]
    return out


def pixel_problems(shot: Path, v: dict, pngs: list[bytes | None]) -> list[str]:
    """The screenshot: not blank; #headline's box painted; each plot's box shows its image."""
    from PIL import Image, ImageChops, ImageStat

    def mean_diff(a, b) -> float:
        return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3

    im = Image.open(shot).convert("RGB")
    height = min(round(v["page"][1]), SHOT_MAX_PX)
    if im.size != (WIDTH, height):
        return [f"the screenshot is {im.size[0]}x{im.size[1]} px, not {WIDTH}x{height}"]
    colours = im.getcolors(maxcolors=WIDTH * height)
    if len(colours) < 2:
        return ["the screenshot is blank: one colour"]
    background = max(colours)[1]
    out = []

    def crop(box):
        x, y, w, h = (round(c) for c in box)
        return im.crop((x, y, x + w, y + h)) if w > 0 and h > 0 and y + h <= height else None

    if v["headline"] and (c := crop(v["headline"]["box"])) is not None:
        if len(c.getcolors(maxcolors=c.size[0] * c.size[1])) < 2:
            out.append("#headline's box is blank in the screenshot")
    for k, (p, png) in enumerate(zip(v["plots"], pngs), 1):
        c = crop(p["box"])
        if c is None or png is None:
            continue  # below the screenshot, not drawn, or not a PNG: reported elsewhere
        small = (min(SMALL, c.size[0]), max(1, round(c.size[1] * min(SMALL, c.size[0]) / c.size[0])))
        drawn = Image.open(io.BytesIO(png)).convert("RGBA").resize(c.size, Image.BILINEAR)
        # transparent parts of the plot show what the page paints under it
        want = Image.alpha_composite(c.convert("RGBA"), drawn).convert("RGB").resize(small, Image.BOX)
        got = c.resize(small, Image.BOX)
        blank = mean_diff(want, Image.new("RGB", small, background))
        seen = mean_diff(got, want)
        if blank == 0:
            out.append(f"plot {k} ({p['alt']!r}) is a blank image")
        elif seen > PIXEL_TOL * blank:
            out.append(f"plot {k} ({p['alt']!r}) is not what the screenshot shows in its box "
                       f"(differs {seen / blank:.2f} x as much as a blank box; limit {PIXEL_TOL})")
    return out


def browser_problems(browser: str, page: Path, work: Path) -> list[str]:
    """Everything the browser shows wrong about ``page``; screenshot kept in ``work``."""
    text = page.read_text()
    pngs = [png_of(n) for n in plot_images(Tree(text))]
    probed = work / "probed.html"
    at = text.lower().rfind("</body>")
    script = f"<script>{PROBE}</script>"
    probed.write_text(text[:at] + script + text[at:] if at >= 0 else text + script)
    dom = run_chromium(browser, probed, work, f"--window-size={WIDTH},{FIRST_SCREEN}",
                       "--virtual-time-budget=10000", f"--log-net-log={work / 'probe.netlog.json'}",
                       "--dump-dom")
    m = VERDICT.search(dom)
    if m is None:
        return [f"the probe left no verdict (did the page fire load?); DOM ends: {dom[-500:]!r}"]
    v = json.loads(htmllib.unescape(m.group(1)))
    out = probe_problems(v, len(pngs))
    shot = work / "screenshot.png"
    height = min(round(v["page"][1]), SHOT_MAX_PX)
    run_chromium(browser, page, work, f"--window-size={WIDTH},{height}", f"--screenshot={shot}",
                 f"--log-net-log={work / 'shot.netlog.json'}")
    if not shot.is_file():
        out.append("Chromium wrote no screenshot")
    else:
        out += pixel_problems(shot, v, pngs)
    for log in ("probe.netlog.json", "shot.netlog.json"):
        out += [f"the page requested {u[:100]} (net log)" for u in page_requests(work / log)]
    return out


# --- the tests ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    """The HTML report of the committed CPU-fallback result, written by the CLI."""
    page = tmp_path_factory.mktemp("report") / "report.html"
    r = subprocess.run([sys.executable, "-m", "kvbench", "report", str(RESULT), "--html", str(page)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and page.is_file(), f"kvbench report failed ({r.returncode}): {r.stderr[-3000:]}"
    return page


def test_report_html_follows_the_contract(report_page):
    problems = static_problems(report_page.read_text())
    assert not problems, f"{report_page}:\n  " + "\n  ".join(problems)


def test_report_renders_in_chromium(report_page, tmp_path):
    browser = chromium_binary()
    problems = browser_problems(browser, report_page, tmp_path)
    assert not problems, (f"{report_page} in {browser} (screenshot: {tmp_path / 'screenshot.png'}):\n  "
                          + "\n  ".join(problems))


def broken_page(work: Path) -> Path:
    """A page that breaks the contract in known ways, each plot its own way."""
    from PIL import Image, ImageDraw

    def png(seed: int) -> str:
        im = Image.new("RGB", (320, 200), "white")
        d = ImageDraw.Draw(im)
        for i in range(12):
            d.line((0, 15 * i + seed, 319, 190 - 11 * i), fill=(40 * i % 256, 90, 200 - 9 * i), width=3)
        buf = io.BytesIO()
        im.save(buf, "PNG")
        return PNG_URI + base64.b64encode(buf.getvalue()).decode()

    page = work / "broken.html"
    page.write_text(f"""<!DOCTYPE html><html><head><meta charset="utf-8">
<style>.lid{{position:relative;margin-top:-150px;height:160px;background:#c00}}</style></head><body>
<h1>a broken report</h1>
<section id="headline" style="display:none">headline</section>
<figure class="plot"><img alt="fine" src="{png(0)}"></figure>
<figure class="plot" style="visibility:hidden"><img alt="invisible" src="{png(1)}"></figure>
<figure class="plot"><img alt="covered" src="{png(2)}"><div class="lid"></div></figure>
<figure class="plot"><img alt="remote" src="http://example.invalid/plot.png"></figure>
<figure class="plot"><img alt="swapped" src="{png(3)}" style="display:block;width:320px;height:200px;object-position:200px 0"></figure>
<img alt="stray" src="{png(4)}">
</body></html>""")
    return page


def test_the_checks_catch_a_broken_page(tmp_path):
    page = broken_page(tmp_path)
    static = static_problems(page.read_text())
    for want in ("<img alt='remote' src='http://example.invalid/plot.png'>: src is not",
                 "src is a network URL", "<img alt='stray'", "is not inside a figure.plot"):
        assert any(want in p for p in static), (want, static)
    assert not any("headline" in p for p in static), static

    problems = browser_problems(chromium_binary(), page, tmp_path)
    expected = ["#headline is laid out 0x0 px", "#headline is hidden: display:none",
                "#headline is covered at its centre",
                "plot 2 ('invisible') is hidden: visibility:hidden",
                "plot 2 ('invisible') is covered at its centre by body",
                "plot 2 ('invisible') is not what the screenshot shows",
                "plot 3 ('covered') is covered at its centre by div.lid",
                "plot 3 ('covered') is not what the screenshot shows",
                "plot 4 ('remote') did not load and decode",
                "plot 4 ('remote') is drawn",  # its alt text's box
                "plot 5 ('swapped') is not what the screenshot shows",
                "the page loaded http://example.invalid/plot.png (resource timing)",
                *["the page requested http://example.invalid/plot.png (net log)"] * 2]  # both runs
    missing = [w for w in expected if not any(p.startswith(w) for p in problems)]
    unexpected = [p for p in problems if not any(p.startswith(w) for w in expected)]
    assert not missing and not unexpected and len(problems) == len(expected), (
        f"not caught: {missing}\nnot expected: {unexpected}\ngot:\n  " + "\n  ".join(problems))


TINY_PNG = PNG_URI + "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
GOOD = (f'<html><head><style>p{{color:#222}}</style></head><body><h1>t</h1><section id="headline">h</section>'
        f'<section><figure class="plot"><img alt="p" src="{TINY_PNG}"></figure></section></body></html>')


@pytest.mark.parametrize("old, new, want", [
    ('<section id="headline">h</section>', "", 'expected one element with id="headline", found 0'),
    ('<section id="headline">h</section>', '<div id="headline">h</div>', "#headline is <div id='headline'>"),
    ("<h1>t</h1>", "<h1>t</h1><section>s</section>", "#headline is not the first <section>"),
    ("<h1>t</h1>", f'<h1>t</h1><figure class="plot"><img alt="q" src="{TINY_PNG}"></figure>',
     "a figure.plot comes before #headline"),
    ('<img alt="p"', f'<img alt="q" src="{TINY_PNG}"><img alt="p"', "figure.plot 1 holds 2 <img>"),
    ('class="plot"', 'class="chart"', 'no <figure class="plot">'),
    (TINY_PNG, PNG_URI + base64.b64encode(b"GIF89a...").decode(), "src is not a data:image/png;base64,"),
    (TINY_PNG, "plot.png", "src is not a data:image/png;base64,"),
    (TINY_PNG, "https://cdn.example/p.png", "src is a network URL"),
    ("<h1>t</h1>", '<h1>t</h1><a href="http://example.org">x</a>', "href is a network URL"),
    ("<head>", '<head><link rel="stylesheet" href="//cdn.example/x.css">', "href is a network URL"),
    ('alt="p"', 'alt="p" srcset="x.png 1x, https://cdn.example/p.png 2x"', "srcset is a network URL"),
    ("color:#222", "background:url( 'https://cdn.example/bg.png')", "a <style> fetches"),
    ("color:#222", '@import "x.css";', "a <style> fetches"),
    ("<h1>", '<h1 style="background:url(//cdn.example/bg.png)">', "its style fetches"),
    ("<head>", '<head><meta http-equiv="Refresh" content="0; url=https://example.org">', "a refresh navigates"),
])
def test_the_text_checks_catch_each_breach(old, new, want):
    assert static_problems(GOOD) == []
    assert old in GOOD
    problems = static_problems(GOOD.replace(old, new, 1))
    assert any(want in p for p in problems), problems
