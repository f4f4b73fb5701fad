"""make weights without internet: a local HTTP server (127.0.0.1 only) serves small stand-in files.

Download, resume with a Range request after a cut connection, a size or hash mismatch refused and the
partial file removed, a file that does not load refused, and the offline message (one line per file,
naming its URL and where to put a copy).
"""
from __future__ import annotations

import hashlib
import http.server
import io
import re
import socket
import threading

import pytest
import torch

from cytocore import paths
from train.weights import __main__ as cli_main
from train.weights import catalog, fetch
from train.weights.errors import WeightsError

pytestmark = pytest.mark.unit

MAX_REQUESTS = 50  # the server answers at most this many requests, then 503
LIFETIME_S = 60  # and shuts itself down after this long, whatever the test does


class StandIns(http.server.BaseHTTPRequestHandler):
    """GET /<name> of ``files``; honours ``Range: bytes=N-``; sends ``cut[name]`` bytes then drops."""

    files: dict[str, bytes] = {}
    cut: dict[str, int] = {}
    requests: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        name = self.path.lstrip("/")
        self.requests.append((name, self.headers.get("Range")))
        if len(self.requests) > MAX_REQUESTS:
            self.send_error(503)
            return
        if name.startswith("moved/"):  # GitHub and the Hugging Face hub answer with a redirect to a CDN
            self.send_response(302)
            self.send_header("Location", f"/{name.removeprefix('moved/')}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if name not in self.files:
            self.send_error(404)
            return
        data = self.files[name]
        found = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(found.group(1)) if found else 0
        if start >= len(data) and found:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        self.send_response(206 if found else 200)
        if found:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if name in self.cut:  # send part of the body, then drop the connection
            body = body[:self.cut.pop(name)]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture
def server():
    """A stand-in file server on 127.0.0.1 (port chosen by the OS); stops by itself after LIFETIME_S."""
    StandIns.files, StandIns.cut, StandIns.requests = {}, {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandIns)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(LIFETIME_S, httpd.shutdown)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", StandIns
    finally:
        watchdog.cancel()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CYTOKIT_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy in the environment must not see the stand-ins
    return tmp_path / "weights"


def state_dict_bytes(n: int = 4000) -> bytes:
    """A real (small) torch state dict, as bytes: what a weights file is."""
    buf = io.BytesIO()
    torch.save({"layer.weight": torch.arange(n, dtype=torch.float32), "layer.bias": torch.zeros(3)}, buf)
    return buf.getvalue()


def entry(base: str, name: str, data: bytes, **pins) -> catalog.Entry:
    """A catalogue entry for a stand-in, pinned with its real sha256 unless ``pins`` say otherwise."""
    pins.setdefault("sha256", hashlib.sha256(data).hexdigest()[:8])
    return catalog.Entry(name, f"{name}.pth", f"{base}/{name}.pth", "tensors", (), "stand-in", 0.1, "test",
                         sets=("default", "all"), **pins)


def test_download_checks_and_renames_into_place(server, weights_dir):
    base, files = server
    data = state_dict_bytes()
    files.files["good.pth"] = data
    e = entry(base, "good", data)
    line = fetch.fetch(e, progress=False)
    assert line.startswith(f"{weights_dir / 'good.pth'}: downloaded") and "2 tensors" in line
    assert (weights_dir / "good.pth").read_bytes() == data
    assert not fetch.part_path(e.path).exists()
    assert fetch.fetch(e, progress=False).endswith("present (2 tensors, 0.0 M parameters)")
    assert len(files.requests) == 1  # a present file is checked, not fetched again
    e.path.write_bytes(data[:-10])  # damaged since
    with pytest.raises(WeightsError, match="good.pth: present but refused: sha256 .* delete it and run make"):
        fetch.fetch(e, progress=False)


def test_interrupted_download_resumes_with_a_range_request(server, weights_dir):
    base, files = server
    data = state_dict_bytes(20000)
    files.files["big.pth"], files.cut["big.pth"] = data, 30000
    e = entry(base, "big", data)
    with pytest.raises(WeightsError, match="run again to resume"):
        fetch.fetch(e, progress=False)
    part = fetch.part_path(e.path)
    assert part.stat().st_size == 30000 and not e.path.exists()  # the part is kept for the next run
    assert fetch.fetch(e, progress=False).startswith(f"{e.path}: downloaded")
    assert files.requests == [("big.pth", None), ("big.pth", "bytes=30000-")]
    assert e.path.read_bytes() == data and not part.exists()


def test_resume_follows_a_redirect_with_its_range(server, weights_dir):
    base, files = server
    data = state_dict_bytes(20000)
    files.files["cdn.pth"], files.cut["cdn.pth"] = data, 10000
    e = entry(base, "cdn", data)
    url = f"{base}/moved/cdn.pth"
    with pytest.raises(WeightsError, match="run again to resume"):
        fetch.fetch(e, url, progress=False)
    assert fetch.fetch(e, url, progress=False).startswith(f"{e.path}: downloaded")
    assert files.requests == [("moved/cdn.pth", None), ("cdn.pth", None),
                              ("moved/cdn.pth", "bytes=10000-"), ("cdn.pth", "bytes=10000-")]
    assert e.path.read_bytes() == data


def test_a_complete_part_is_finished_without_refetching(server, weights_dir):
    base, files = server
    data = state_dict_bytes()
    files.files["done.pth"] = data
    e = entry(base, "done", data)
    part = fetch.part_path(e.path)
    part.parent.mkdir(parents=True)
    part.write_bytes(data)  # the previous run was cut after its last byte
    assert fetch.fetch(e, progress=False).startswith(f"{e.path}: downloaded")
    assert files.requests == [("done.pth", f"bytes={len(data)}-")] and e.path.read_bytes() == data


@pytest.mark.parametrize("pins, message", [
    ({"sha256": "00000000"}, r"sha256 [0-9a-f]{16}\.\.\. does not match the published 00000000"),
    ({"md5": "0" * 32}, "md5 .* does not match the published 0{32}"),
    ({"size": 12345}, r"\d+ bytes, expected 12345"),
])
def test_a_hash_or_size_mismatch_is_refused_and_removed(server, weights_dir, pins, message):
    base, files = server
    data = state_dict_bytes()
    files.files["bad.pth"] = data
    e = entry(base, "bad", data, **pins)
    with pytest.raises(WeightsError, match=f"bad.pth: download refused and removed: {message}"):
        fetch.fetch(e, progress=False)
    assert not e.path.exists() and not fetch.part_path(e.path).exists()


def test_a_file_that_does_not_load_is_refused_and_removed(server, weights_dir):
    base, files = server
    page = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"  # what a login wall returns
    files.files["page.pth"] = page
    e = entry(base, "page", page)
    with pytest.raises(WeightsError, match="an HTML/text page .* not page weights"):
        fetch.fetch(e, progress=False)
    assert not e.path.exists() and not fetch.part_path(e.path).exists()


def test_http_errors_name_the_url(server):
    base, _ = server
    e = entry(base, "absent", b"x", sha256="")
    with pytest.raises(WeightsError, match=f"{base}/absent.pth: HTTP 404"):
        fetch.fetch(e, progress=False)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_downloads_a_set_through_a_mirror_then_reports_present(server, weights_dir, monkeypatch, capsys):
    base, files = server
    data = {n: state_dict_bytes(100 * (i + 1)) for i, n in enumerate(("one", "two"))}
    files.files.update({f"{n}.pth": d for n, d in data.items()})
    upstream = "https://example.invalid"  # never contacted: --mirror replaces it
    monkeypatch.setattr(catalog, "ENTRIES", tuple(entry(upstream, n, d) for n, d in data.items()))
    assert cli_main.main(["--set", "default", "--mirror", base, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "downloaded" in out and f"2 file(s) ready in {weights_dir}" in out
    assert sorted(name for name, _ in files.requests) == ["one.pth", "two.pth"]
    assert cli_main.main(["--set", "one", "--mirror", base]) == 0
    assert "present" in capsys.readouterr().out and len(files.requests) == 2


def test_offline_exit_status_and_one_line_per_file(weights_dir, monkeypatch, capsys):
    port = closed_port()  # nothing listens there: connection refused, as without a network
    entries = tuple(entry(f"http://127.0.0.1:{port}", n, b"x", sha256="") for n in ("one", "two", "three"))
    monkeypatch.setattr(catalog, "ENTRIES", entries)
    weights_dir.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, weights_dir / "three.pth")  # present and loadable: no line for it
    assert cli_main.main(["--set", "all", "--timeout", "2", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3, err  # one line per missing file, then the summary
    for line, name in zip(err, ("one", "two")):
        assert line.startswith(f"{name}.pth: not downloaded (no connection")
        url = f"http://127.0.0.1:{port}/{name}.pth"
        assert f"fetch {url} elsewhere and copy it to {weights_dir / name}.pth" in line
    assert err[2].startswith("2 of 3 file(s) missing or refused (no network")


def test_only_the_weights_downloader_opens_network_connections():
    """Every other module stays offline: none imports an HTTP client."""
    pattern = re.compile(r"^\s*(import|from)\s+(urllib\.request|http\.client|requests|socket)\b", re.M)
    folders = ("cytokit", "cytocore", "prepare", "train", "infer", "submit", "pipeline", "bench")
    users = sorted(str(p.relative_to(paths.ROOT)) for folder in folders
                   for p in (paths.ROOT / folder).rglob("*.py") if pattern.search(p.read_text()))
    assert users == ["train/weights/fetch.py"]


@pytest.mark.smoke  # writes and serves an 86 MB stand-in of the real file
def test_make_weights_set_dinobloom_s_downloads_and_checks_it(server, weights_dir, monkeypatch, capsys,
                                                              tmp_path):
    import dataclasses

    import timm
    from safetensors.torch import save_file

    base, files = server
    real = catalog.by_name()["dinobloom_s"]
    standin = tmp_path / "standin.safetensors"  # the hub file's tensors by name and shape, random values
    save_file(timm.create_model("vit_small_patch14_dinov2", img_size=224).state_dict(), standin)
    files.files[real.file] = data = standin.read_bytes()
    # pinned to the published hash, the stand-in is refused and removed
    assert cli_main.main(["--set", "dinobloom_s", "--mirror", base, "--no-progress"]) == 1
    assert f"sha256 {hashlib.sha256(data).hexdigest()[:16]}... does not match the published {real.sha256}" \
        in capsys.readouterr().err
    assert not real.path.exists() and not fetch.part_path(real.path).exists()
    # pinned to its own hash, it is downloaded, loaded against ViT-S/14 at 224 px, and kept
    pinned = dataclasses.replace(real, sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(catalog, "ENTRIES", tuple(pinned if e.name == "dinobloom_s" else e
                                                  for e in catalog.ENTRIES))
    assert cli_main.main(["--set", "dinobloom_s", "--mirror", base, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{real.path}: downloaded 86.5 MB (174 tensors, 21.6 M parameters)" in out
    assert real.path.read_bytes() == data and [n for n, _ in files.requests] == [real.file] * 2
