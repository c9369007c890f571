"""The web viewer (engine/web/viewer.py, engine/web/static) in a real browser.

Headless Chromium (Debian's chromium and chromium-driver) driven by Selenium
against a real engine filled over C-STORE: the study list (search, sort, paging),
the study page (series thumbnails decoded by the browser), and the viewer
(scrolling by keyboard, wheel and slider; window presets checked on the pixels
read back from the canvas against the stored pixel data windowed here, both
with client-side windowing and with images the server renders; W/L drag, zoom).
Skipped when Chromium, its driver or Selenium is missing, failed under CI=true.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import time
import urllib.error
import urllib.request

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.integration.test_retrieve import fill
from tests.support import LOOPBACK, ServerThread, make_config
from tools.generate_data import generate_study

CT_ID, MR_ID, J2K_ID = "VWCT", "VWMR", "VWJ2K"
FILLERS = 24  # with the three above: 27 studies, two pages of 25
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
VIEWPORT = (1280, 800)
WAIT = 20.0


def _require(found, what: str):
    if not found:
        message = f"{what} not found: install the Debian packages 'chromium chromium-driver' " \
                  "and the PyPI package 'selenium' (pip install -e '.[test]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


# --- data and server -------------------------------------------------------------------------
def _j2k_study() -> list[pydicom.Dataset]:
    """pydicom's MR stored as JPEG 2000 Lossless: the viewer gets it decoded by the server."""
    ds = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    ds.PatientID = J2K_ID
    ds.StudyDate = "20100101"
    return [ds]


@pytest.fixture(scope="module")
def studies():
    ct = generate_study(31, profile="ct", series=2, instances_per_series=20, rows=128,
                        columns=128, PatientID=CT_ID, PatientName="TESTVIEW^CT",
                        StudyDate="20240315", AccessionNumber="VWACC1")
    mr = generate_study(32, profile="mr", series=1, instances_per_series=6, rows=96,
                        columns=96, PatientID=MR_ID, StudyDate="20230610")
    fillers = [generate_study(100 + i, profile="tiny", series=1, instances_per_series=1,
                              PatientID=f"VWF{i:02d}", StudyDate=f"20{19 + i % 3}0{1 + i % 9}15")
               for i in range(FILLERS)]
    return {"ct": ct, "mr": mr, "j2k": _j2k_study(), "fillers": fillers}


@pytest.fixture(scope="module")
def archive(tmp_path_factory, studies):
    data = tmp_path_factory.mktemp("viewer") / "data"
    running = ServerThread(make_config(data, web={}, codec={"workers": 1})).start()
    fill(running.port, studies["ct"] + studies["mr"] +
         [ds for study in studies["fillers"] for ds in study])
    fill(running.port, studies["j2k"])  # an association of its own: another transfer syntax
    yield running
    running.stop()


@pytest.fixture(scope="module")
def url(archive) -> str:
    return f"http://{LOOPBACK}:{archive.web_port}"


# --- the browser -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def driver():
    chromium = _require(next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None),
                        "Chromium")
    chromedriver = _require(shutil.which("chromedriver") or
                            next((p for p in ("/usr/lib/chromium/chromedriver",)
                                  if os.path.exists(p)), None), "chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _require(None, "selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--no-first-run", "--disable-extensions", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--mute-audio",
                     "--force-device-scale-factor=1", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        # The page itself 1280x800, whatever the window decorations take.
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1,
            "mobile": False})
        browser.set_script_timeout(WAIT)
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def page(driver, url):
    """The browser on a fresh viewer page; fails on JavaScript errors logged meanwhile."""
    driver.get(url + "/")
    driver.execute_script("localStorage.clear(); sessionStorage.clear();")
    driver.get_log("browser")  # drop what came before
    yield driver
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"errors in the browser console: {errors}"


def wait_for(driver, script: str, *args, timeout: float = WAIT, what: str = ""):
    """Poll a JavaScript expression (`return ...`) until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = driver.execute_script(script, *args)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or script!r} (last value {value!r})")


def field(driver, name: str) -> str:
    return driver.execute_script(
        "return document.querySelector(`[data-field='${arguments[0]}']`).textContent", name)


def canvas(driver) -> dict:
    return driver.execute_script("return Object.assign({}, document.getElementById('viewport')"
                                 ".dataset)")


def wait_drawn(driver, after: int, what: str, **expected) -> dict:
    """Wait for a draw newer than `after` whose canvas data-* match `expected`."""
    return wait_for(driver, """
        const c = document.getElementById('viewport');
        if (!c || Number(c.dataset.draws || 0) <= arguments[0]) return null;
        for (const [k, v] of Object.entries(arguments[1])) if (c.dataset[k] !== v) return null;
        return Object.assign({}, c.dataset);
    """, after, expected, what=what)


PIXELS_JS = """
const c = document.getElementById('viewport');
const ctx = c.getContext('2d');
const all = ctx.getImageData(0, 0, c.width, c.height).data;
let sum = 0, hash = 0, lit = 0;
for (let i = 0; i < all.length; i += 4) {
  sum += all[i];
  if (all[i] > 0) lit += 1;
  hash = (Math.imul(hash, 31) + all[i]) | 0;
}
const r = 3, cx = c.width >> 1, cy = c.height >> 1;
const block = ctx.getImageData(cx - r, cy - r, 2 * r + 1, 2 * r + 1).data;
let center = 0;
for (let i = 0; i < block.length; i += 4) center += block[i];
return {mean: sum / (all.length / 4), center: center / (block.length / 4), hash,
        lit: lit / (all.length / 4), width: c.width, height: c.height};
"""


def pixels(driver) -> dict:
    return driver.execute_script(PIXELS_JS)


def windowed(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2 linear VOI, as the viewer and the server apply it."""
    x = values.astype(np.float64)
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    out = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.where(x <= low, 0, np.where(x > high, 255, out))


def expected_center(ds: pydicom.Dataset, center: float, width: float) -> float:
    """Grey level at the middle of the image under a window (the canvas centre, unpanned)."""
    hu = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    rows, cols = hu.shape
    block = hu[rows // 2 - 2:rows // 2 + 2, cols // 2 - 2:cols // 2 + 2]
    return float(windowed(block, center, width).mean())


def study_uid(datasets) -> str:
    return datasets[0].StudyInstanceUID


def by_sop(datasets) -> dict:
    return {ds.SOPInstanceUID: ds for ds in datasets}


# --- serving the files (no browser needed) ------------------------------------------------------
def http_get(url: str, **headers) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, \
                response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def test_page_and_assets_are_served_with_types_and_cache_headers(url):
    status, headers, body = http_get(url + "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    page = body.decode()
    assert "{{" not in page and '<meta name="dicomweb-root" content="/dicomweb">' in page
    assets = re.findall(r'(?:src|href)="(/static/v-[0-9a-f]+/[^"]+)"', page)
    assert {a.rsplit("/", 1)[-1] for a in assets} >= {"app.js", "style.css", "icon.svg"}

    types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
             ".svg": "image/svg+xml"}
    for asset in assets:
        status, headers, body = http_get(url + asset)
        assert status == 200, asset
        assert headers["content-type"] == types[os.path.splitext(asset)[1]]
        assert headers["cache-control"] == "public, max-age=31536000, immutable"
        etag = headers["etag"]
        # Revalidation, unversioned URLs, compression.
        assert http_get(url + asset, **{"If-None-Match": etag})[0] == 304
        plain = url + "/static/" + asset.split("/", 3)[3]
        status, headers, same = http_get(plain)
        assert status == 200 and same == body and headers["cache-control"] == "no-cache"
        status, headers, packed = http_get(url + asset, **{"Accept-Encoding": "gzip"})
        if headers.get("content-encoding") == "gzip":
            assert gzip.decompress(packed) == body and headers["etag"] != etag
            assert http_get(url + asset, **{"Accept-Encoding": "gzip",
                                            "If-None-Match": headers["etag"]})[0] == 304
    # Modules import each other relative to the versioned path: all of them are there.
    app = http_get(url + next(a for a in assets if a.endswith("app.js")))[2].decode()
    for module in re.findall(r"from '\./([\w.]+\.js)'", app):
        assert http_get(url + "/static/js/" + module)[0] == 200, module

    for missing in ("/static/nothing.js", "/static/index.html", "/static/../viewer.py",
                    "/static/%2e%2e/viewer.py", "/static/v-0/js/app.js.map"):
        assert http_get(url + missing)[0] == 404, missing
    # An outdated version still gets the current file, not to be kept.
    status, headers, _ = http_get(url + "/static/v-000000000000/js/app.js")
    assert status == 200 and headers["cache-control"] == "no-cache"


def test_page_names_the_configured_dicomweb_base_path(tmp_path):
    running = ServerThread(make_config(tmp_path / "data", web={"base_path": "/pacs/web"},
                                       codec={"workers": 1})).start()
    try:
        status, _, body = http_get(f"http://{LOOPBACK}:{running.web_port}/")
    finally:
        running.stop()
    assert status == 200
    assert '<meta name="dicomweb-root" content="/pacs/web">' in body.decode()


# --- the study list ----------------------------------------------------------------------------
def rows(driver) -> list[dict]:
    return driver.execute_script("""
        return [...document.querySelectorAll('table.studies tbody tr[data-study]')].map((tr) =>
          Object.fromEntries([...tr.cells].map((td) => [td.dataset.column, td.textContent])));
    """)


def wait_rows(driver, count: int, what: str) -> list[dict]:
    wait_for(driver, """
        const t = document.querySelector('table.studies');
        return t && !t.hasAttribute('aria-busy') &&
          t.querySelectorAll('tbody tr[data-study]').length === arguments[0];
    """, count, what=what)
    return rows(driver)


def search(driver, **fields) -> None:
    """Fill the search form (ids search-<name>) and submit it."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "button[type=reset]").click()
    wait_for(driver, "return !document.querySelector('table.studies').hasAttribute('aria-busy')")
    for name, value in fields.items():
        element = driver.find_element(By.ID, f"search-{name}")
        if element.get_attribute("type") in ("date",) or element.tag_name == "select":
            driver.execute_script("arguments[0].value = arguments[1]", element, value)
        else:
            element.send_keys(value)
    driver.find_element(By.CSS_SELECTOR, "form.search button[type=submit]").click()


@pytest.mark.browser
def test_study_list_searches_sorts_and_pages(page, url, studies):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = page
    total = FILLERS + 3
    first = wait_rows(driver, 25, "the first page of studies")
    assert driver.title == "Studies · PACS"
    assert all(r["id"] for r in first)
    # Default order: newest study first (within the page).
    dates = [r["date"] for r in first]
    assert dates == sorted(dates, reverse=True)

    # Paging: limit/offset.
    assert driver.find_element(By.ID, "page-prev").get_attribute("disabled") is not None
    driver.find_element(By.ID, "page-next").click()
    second = wait_rows(driver, total - 25, "the second page")
    assert not {r["id"] for r in second} & {r["id"] for r in first}
    assert driver.find_element(By.ID, "page-next").get_attribute("disabled") is not None
    driver.find_element(By.ID, "page-prev").click()
    wait_rows(driver, 25, "the first page again")

    # Sorting: click a column header, again for the other direction.
    driver.find_element(By.CSS_SELECTOR, "button[data-sort=id]").click()
    ids = [r["id"] for r in rows(driver)]
    assert ids == sorted(ids)
    header = driver.find_element(By.CSS_SELECTOR, "button[data-sort=id]")
    assert header.find_element(By.XPATH, "..").get_attribute("aria-sort") == "ascending"
    header.click()
    assert [r["id"] for r in rows(driver)] == sorted(ids, reverse=True)

    # Search by patient ID, name (prefix), date range, modality, accession.
    search(driver, id=CT_ID)
    (row,) = wait_rows(driver, 1, "the CT study by patient ID")
    assert row["id"] == CT_ID and row["modality"] == "CT" and row["images"] == "40"
    assert row["name"] == "TESTVIEW, CT" and row["date"].startswith("2024-03-15")
    search(driver, name="TESTV")
    assert [r["id"] for r in wait_rows(driver, 1, "the CT study by name")] == [CT_ID]
    search(driver, name="TESTVIEW, C")  # as the list shows names: TESTVIEW^C*
    assert [r["id"] for r in wait_rows(driver, 1, "the CT study by full name")] == [CT_ID]
    search(driver, **{"from": "2023-01-01", "to": "2024-12-31"})
    assert {r["id"] for r in wait_rows(driver, 2, "2023-2024 studies")} == {CT_ID, MR_ID}
    search(driver, modality="MR")
    assert {r["id"] for r in wait_rows(driver, 2, "MR studies")} == {MR_ID, J2K_ID}
    search(driver, accession="VWACC1")
    assert [r["id"] for r in wait_rows(driver, 1, "by accession")] == [CT_ID]
    search(driver, id="NOSUCHPATIENT")
    wait_for(driver, "return document.querySelector('tr.empty') !== null", what="no results")

    # Keyboard only: arrow down to the first study, Enter opens it.
    search(driver, id=CT_ID)
    wait_rows(driver, 1, "the CT study again")
    driver.find_element(By.TAG_NAME, "body").click()
    driver.switch_to.active_element.send_keys(Keys.ARROW_DOWN)
    focused = driver.switch_to.active_element
    assert focused.get_attribute("class") == "open-study"
    focused.send_keys(Keys.ENTER)
    wait_for(driver, "return location.hash.startsWith('#/studies/')", what="the study page")
    # No patient data in the URL or the title: UIDs only.
    assert driver.current_url == f"{url}/#/studies/{study_uid(studies['ct'])}"
    assert driver.title == "Study · PACS"


# --- the study page -----------------------------------------------------------------------------
@pytest.mark.browser
def test_study_page_shows_series_thumbnails(page, url, studies):
    from selenium.webdriver.common.by import By

    driver = page
    ct = studies["ct"]
    driver.get(f"{url}/#/studies/{study_uid(ct)}")
    wait_for(driver, "return document.querySelectorAll('.series-card').length === 2",
             what="two series cards")
    wait_for(driver, "return document.getElementById('study-title').textContent === "
             "'TESTVIEW, CT'", what="the patient's name as the heading")
    sizes = wait_for(driver, """
        const imgs = [...document.querySelectorAll('.series-card img')];
        return imgs.length === 2 && imgs.every((i) => i.complete && i.naturalWidth > 0) &&
          imgs.map((i) => [i.naturalWidth, i.naturalHeight]);
    """, what="both thumbnails decoded")
    assert all(0 < w <= 256 and w == h for w, h in sizes)  # square CT slices, thumbnail-sized
    titles = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".series-title")]
    assert titles[0].startswith("Series 1 · CT") and titles[1].startswith("Series 2 · CT")
    assert [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".series-count")] == \
        ["20 images"] * 2
    # Each thumbnail is an image of its series (not a blank): some light, some dark.
    lit = driver.execute_script("""
        return [...document.querySelectorAll('.series-card img')].map((img) => {
          const c = document.createElement('canvas');
          c.width = img.naturalWidth; c.height = img.naturalHeight;
          const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
          const d = ctx.getImageData(0, 0, c.width, c.height).data;
          let bright = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > 60) bright += 1;
          return bright / (d.length / 4);
        });
    """)
    assert all(0.1 < share < 0.95 for share in lit), lit
    # Keyboard: arrows move between the series, Escape goes back to the list.
    from selenium.webdriver.common.keys import Keys
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    links = driver.find_elements(By.CSS_SELECTOR, ".series-card a")
    assert driver.switch_to.active_element == links[0]
    links[0].send_keys(Keys.ARROW_RIGHT)
    assert driver.switch_to.active_element == links[1]
    links[1].send_keys(Keys.ESCAPE)
    wait_for(driver, "return location.hash === '#/' && document.title === 'Studies · PACS'",
             what="back on the list")


# --- the viewer ---------------------------------------------------------------------------------
@pytest.mark.browser
def test_viewer_scrolls_windows_zooms(page, url, studies, tmp_path):
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.mouse_button import MouseButton
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = page
    ct = studies["ct"]
    sops = by_sop(ct)
    series_uid = next(ds.SeriesInstanceUID for ds in ct if ds.SeriesNumber == 1)
    series = sorted((ds for ds in ct if ds.SeriesInstanceUID == series_uid),
                    key=lambda ds: ds.InstanceNumber)
    driver.get(f"{url}/#/studies/{study_uid(ct)}")
    wait_for(driver, "return document.querySelector(`.series-card[data-series='${arguments[0]}']"
             " a`)", series_uid, what="the series card").click()
    state = wait_drawn(driver, 0, "the first image", mode="local")
    assert driver.current_url == f"{url}/#/studies/{study_uid(ct)}/series/{series_uid}"
    assert driver.title == "Viewer · PACS"
    assert state["sop"] == series[0].SOPInstanceUID
    assert field(driver, "instance") == "1" and field(driver, "index") == "1/20"
    assert field(driver, "patient") == "TESTVIEW, CT" and field(driver, "patient-id") == CT_ID
    assert field(driver, "study-date") == "2024-03-15"
    assert field(driver, "series").startswith("Series 1 · CT")
    default = (float(series[0].WindowCenter), float(series[0].WindowWidth))
    assert state["window"] == f"{default[0]:g},{default[1]:g}"
    assert field(driver, "window-width") == f"{default[1]:g}"
    assert field(driver, "position").startswith("Pos ")
    assert field(driver, "thickness") == "Thk 5 mm"
    before = pixels(driver)
    assert 0.05 < before["lit"] < 0.95  # an image, with background around it

    stage = driver.find_element(By.ID, "stage")
    draws = int(state["draws"])

    def scrolled_to(number: int, what: str) -> dict:
        nonlocal draws
        state = wait_drawn(driver, draws, what, sop=series[number - 1].SOPInstanceUID)
        draws = int(state["draws"])
        assert field(driver, "instance") == str(number)
        assert field(driver, "index") == f"{number}/20"
        return state

    # Keyboard.
    stage.send_keys(Keys.ARROW_DOWN)
    scrolled_to(2, "image 2 (arrow down)")
    second = pixels(driver)
    assert second["hash"] != before["hash"]
    # Mouse wheel: one notch, one image.
    ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(stage), 0, 120).perform()
    scrolled_to(3, "image 3 (wheel)")
    ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(stage), 0, -120).perform()
    scrolled_to(2, "image 2 (wheel up)")
    stage.send_keys(Keys.END)
    scrolled_to(20, "the last image (End)")
    stage.send_keys(Keys.HOME)
    scrolled_to(1, "the first image (Home)")
    # The slider (it moves itself with the keyboard).
    slider = driver.find_element(By.ID, "slice-slider")
    slider.send_keys(Keys.ARROW_RIGHT)
    scrolled_to(2, "image 2 (slider)")
    assert driver.find_element(By.ID, "slice-label").text == "2 / 20"
    assert slider.get_attribute("aria-valuetext") == "Image 2 of 20"
    stage.click()
    for _ in range(8):
        stage.send_keys(Keys.ARROW_DOWN)
    middle = series[9]
    scrolled_to(10, "image 10")
    first_position = float(series[0].SliceLocation)
    assert field(driver, "position") != f"Pos {first_position:g} mm"

    # Window presets: the pixels read back are the stored ones under each window.
    def preset(key: str, center: float, width: float, what: str, mode: str = "local") -> dict:
        nonlocal draws
        stage.send_keys(key)
        state = wait_drawn(driver, draws, what, window=f"{center:g},{width:g}", mode=mode,
                           sop=middle.SOPInstanceUID)
        draws = int(state["draws"])
        stats = pixels(driver)
        expected = expected_center(sops[middle.SOPInstanceUID], center, width)
        assert abs(stats["center"] - expected) < 12, (what, stats, expected)
        return stats

    lung = preset("3", -600, 1500, "the lung window")
    assert field(driver, "preset") == "Lung" and field(driver, "window-center") == "-600"
    bone = preset("4", 400, 1800, "the bone window")
    soft = preset("2", 40, 400, "the soft tissue window")
    # Soft tissue is grey in a soft tissue window, nearly white in lung, dark in bone...
    assert lung["center"] > soft["center"] + 60 > bone["center"] + 90
    # ...and the whole image is brighter in the lung window than in the bone window.
    assert lung["mean"] > bone["mean"] * 1.5
    driver.find_element(By.CSS_SELECTOR, "button[data-preset=brain]").click()
    wait_drawn(driver, draws, "the brain window", window="40,80")
    assert driver.find_element(By.CSS_SELECTOR, "button[data-preset=brain]") \
        .get_attribute("aria-pressed") == "true"
    draws = int(canvas(driver)["draws"])
    stage.send_keys("1")
    wait_drawn(driver, draws, "the file's window", window=f"{default[0]:g},{default[1]:g}")
    draws = int(canvas(driver)["draws"])

    # Right-drag adjusts the window: right widens, down raises the level.
    actions = ActionBuilder(driver)
    actions.pointer_action.move_to(stage).pointer_down(MouseButton.RIGHT)
    for step in range(1, 5):
        actions.pointer_action.move_to(stage, 15 * step, 10 * step)
    actions.pointer_action.pointer_up(MouseButton.RIGHT)
    actions.perform()
    state = wait_for(driver, """
        const c = document.getElementById('viewport').dataset;
        const [center, width] = c.window.split(',').map(Number);
        return width > arguments[1] && center > arguments[0] && c.window;
    """, *default, what="a wider, higher window after the drag")
    assert field(driver, "preset") == "Custom"
    draws = int(canvas(driver)["draws"])

    # Invert, zoom, pan, reset.
    unzoomed = pixels(driver)
    stage.send_keys("i")
    state = wait_drawn(driver, draws, "the inverted image", invert="true")
    draws = int(state["draws"])
    assert abs(pixels(driver)["center"] - (255 - unzoomed["center"])) < 3
    stage.send_keys("i")
    draws = int(wait_drawn(driver, draws, "not inverted again", invert="false")["draws"])
    stage.send_keys("+")
    wait_for(driver, "return document.querySelector('[data-field=zoom]').textContent === '125%'")
    zoomed = pixels(driver)
    assert zoomed["lit"] > unzoomed["lit"]  # the image fills more of the canvas
    stage.send_keys("p")  # the pan tool: a left drag moves the image
    assert driver.find_element(By.CSS_SELECTOR, "button[data-tool=pan]") \
        .get_attribute("aria-pressed") == "true"
    ActionChains(driver).move_to_element(stage).click_and_hold().move_by_offset(80, 0) \
        .move_by_offset(80, 0).release().perform()
    panned = pixels(driver)
    assert panned["hash"] != zoomed["hash"] and field(driver, "zoom") == "125%"
    stage.send_keys("w")
    stage.send_keys("r")
    wait_drawn(driver, draws, "the reset view", window=f"{default[0]:g},{default[1]:g}")
    assert field(driver, "zoom") == "100%" and field(driver, "preset") == "Default"
    draws = int(canvas(driver)["draws"])
    driver.save_screenshot(str(tmp_path / "viewer-client.png"))

    # The same windows rendered by the server agree with the client's.
    driver.find_element(By.ID, "server-rendering").click()
    wait_drawn(driver, draws, "a server-rendered image", mode="server")
    draws = int(canvas(driver)["draws"])
    assert field(driver, "mode") == "Server rendering"
    server_lung = preset("3", -600, 1500, "the lung window (server)", mode="server")
    server_bone = preset("4", 400, 1800, "the bone window (server)", mode="server")
    assert abs(server_lung["mean"] - lung["mean"]) < 3
    assert abs(server_bone["mean"] - bone["mean"]) < 3
    stage.send_keys(Keys.ARROW_DOWN)
    state = wait_drawn(driver, draws, "image 11 (server)", sop=series[10].SOPInstanceUID,
                       mode="server")
    assert field(driver, "instance") == "11"
    driver.save_screenshot(str(tmp_path / "viewer-server.png"))
    driver.find_element(By.ID, "server-rendering").click()
    wait_drawn(driver, int(state["draws"]), "client windowing again", mode="local")

    # Other series from the strip; Escape goes back to the study.
    other = next(ds for ds in ct if ds.SeriesNumber == 2)
    draws = int(canvas(driver)["draws"])
    stage.send_keys("]")
    wait_drawn(driver, draws, "the second series", mode="local")
    assert field(driver, "series").startswith("Series 2 · CT")
    assert driver.current_url.endswith(f"/series/{other.SeriesInstanceUID}")
    driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait_for(driver, "return document.querySelectorAll('.series-card').length === 2",
             what="back on the study page")
    assert driver.title == "Study · PACS"


@pytest.mark.browser
def test_viewer_shows_a_compressed_instance(page, url, studies):
    """A JPEG 2000 instance: the server sends its frame uncompressed, the page windows it."""
    driver = page
    (ds,) = studies["j2k"]
    driver.get(f"{url}/#/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}")
    state = wait_drawn(driver, 0, "the JPEG 2000 image", mode="local")
    assert state["sop"] == ds.SOPInstanceUID
    stats = pixels(driver)
    assert 0.2 < stats["lit"] and stats["mean"] > 10
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    assert state["window"] == f"{center:g},{width:g}"
    assert abs(stats["center"] - expected_center(ds, center, width)) < 16
    # Not CT: no CT presets offered.
    assert driver.execute_script(
        "return [...document.querySelectorAll('button.preset')].filter((b) => !b.hidden)"
        ".map((b) => b.dataset.preset)") == ["default"]


@pytest.mark.browser
def test_viewer_asks_for_a_token_when_the_archive_wants_one(driver, tmp_path):
    """[web] authentication = "token": the page asks once, then sends it on every request
    (thumbnails included: fetched, not <img src>)."""
    import hashlib

    from selenium.webdriver.common.by import By

    study = generate_study(41, profile="tiny", series=1, instances_per_series=2,
                           PatientID="VWAUTH")
    token = "viewer-test-token"
    running = ServerThread(make_config(tmp_path / "data", codec={"workers": 1}, web={
        "authentication": "token",
        "token_sha256": [hashlib.sha256(token.encode()).hexdigest()]})).start()
    try:
        fill(running.port, study)
        url = f"http://{LOOPBACK}:{running.web_port}"
        driver.get(url + "/")
        driver.execute_script("localStorage.clear(); sessionStorage.clear(); location.reload()")
        wait_for(driver, "return document.getElementById('token-dialog').open",
                 what="the token dialog")
        driver.find_element(By.ID, "token-input").send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "#token-dialog button[value=ok]").click()
        assert [r["id"] for r in wait_rows(driver, 1, "the study, signed in")] == ["VWAUTH"]
        driver.get(f"{url}/#/studies/{study[0].StudyInstanceUID}")
        wait_for(driver, "const i = document.querySelector('.series-card img');"
                         "return i && i.complete && i.naturalWidth > 0", what="the thumbnail")
        driver.get(f"{url}/#/studies/{study[0].StudyInstanceUID}/series/"
                   f"{study[0].SeriesInstanceUID}")
        wait_drawn(driver, 0, "the image, signed in", mode="local")
        assert not driver.execute_script("return document.getElementById('token-dialog').open")
    finally:
        driver.execute_script("sessionStorage.clear()")
        driver.get_log("browser")  # the first, unauthorized attempt was logged, as expected
        running.stop()
