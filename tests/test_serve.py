"""`lightfit serve`: a real server process (LitServe), a real HTTP client (urllib).

Good requests answer what `lightfit predict` writes; each bad request gets a 4xx with one
line and the server goes on serving, also when the bad request shares a batch with good ones.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, cli, needs, predicted, require, run_train

from lightfit.data import load_split

pytestmark = [pytest.mark.slow, needs("serve")]  # a server process each: `make test-all`


def descendants(pid: int) -> set[int]:
    """The processes started by `pid`, and theirs (from /proc/<pid>/stat's parent field)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`lightfit serve ckpt_path=... port=...` in its own process, until the test ends."""

    def __init__(self, ckpt: Path, *args: str) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "lightfit", "serve", f"ckpt_path={ckpt}", f"port={self.port}", *args]
        # its own process group, as a command started on a terminal is: Ctrl-C reaches all of it
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.stop = signal.SIGTERM
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as answer:
                    if answer.read() == b"ok":
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("the server did not answer /health in 120 s")

    def post(self, body: bytes | dict, content_type: str = "application/json") -> tuple[int, dict]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/predict", data=data, headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def close(self) -> None:
        """SIGTERM, as `kill` or a service manager sends it, or Ctrl-C (`self.stop = SIGINT`: to
        the whole process group, as a terminal sends it): the command and every process it
        started (LitServe's API server and the model's worker) end, and none prints a traceback."""
        started = descendants(self.proc.pid)
        assert started, "LitServe started no process"
        if self.stop == signal.SIGINT:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("lightfit serve did not stop on SIGTERM") from None
        deadline = time.monotonic() + 30
        while (left := alive(started)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:  # not to leave them running after the test
            os.kill(pid, 9)
        assert not left, f"processes left after {self.stop.name}: {sorted(left)}"
        output = self.proc.stdout.read()
        assert "Traceback" not in output, output


@pytest.fixture
def serving():
    servers = []

    def start(ckpt: Path, *args: str) -> Server:
        servers.append(Server(ckpt, *args))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def form(*files: tuple[str, bytes], field: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body of (file name, bytes) parts, as `curl -F file=@a.png -F file=@b.png`
    sends it, and its Content-Type."""
    boundary = "lightfit-test-7d2a9c"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'.encode()
        + b"Content-Type: application/octet-stream\r\n\r\n"
        + data
        + b"\r\n"
        for name, data in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def upload(server: Server, *files: tuple[str, bytes], field: str = "file") -> tuple[int, dict]:
    body, content_type = form(*files, field=field)
    return server.post(body, content_type)


def assert_refused(server: Server, body, needle: str, status: int = 422, **kwargs) -> None:
    code, answer = server.post(body, **kwargs)
    assert code == status, answer
    assert needle in answer.get("error", answer.get("detail", "")), answer
    assert "\n" not in answer.get("error", ""), answer


def test_arrays_good_bad_then_good_again(serving, tmp_path):
    run = tmp_path / "run"
    run_train(run, *FAST)
    x_test = load_split(run)["test"][0][:40]
    np.save(tmp_path / "x.npy", x_test)
    expected = predicted(run, tmp_path / "x.npy", tmp_path)
    server = serving(run / "checkpoints/best.ckpt", "max_body_mb=0.05", "batch_timeout=0.05")

    code, answer = server.post({"x": x_test.tolist()})
    assert code == 200
    probs = np.array([[p[str(c)] for c in range(10)] for p in answer["probabilities"]])
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert answer["predictions"] == [str(c) for c in expected.argmax(axis=1)]

    assert_refused(server, {"x": [1, 2, 3]}, '"x" has shape [3]; the model takes samples of shape [8, 8]')
    assert_refused(server, {"rows": []}, 'this model takes {"x": ...} (arrays)')
    assert_refused(server, b"not json", "the body is not valid JSON")
    assert_refused(server, b"[1, 2]", "the body is not a JSON object")
    assert_refused(server, {"x": [["a"] * 8] * 8}, '"x" is not a list of numbers')
    assert_refused(server, {"x": np.full((8, 8), np.nan).tolist()}, "NaN or infinite")
    code, _ = server.post({"x": np.zeros((200, 8, 8)).tolist()})  # about 100 KB: over max_body_mb
    assert code == 413
    body, content_type = form(("digit.png", b"\x89PNG..."))  # any file: this model takes none
    assert_refused(server, body, 'this model (arrays) takes JSON, {"x": ...}', 415, content_type=content_type)

    # One bad request among good ones sent at once (batch_timeout=0.05: batched together):
    # only it is refused.
    bodies = [{"x": x_test[i].tolist()} for i in range(8)]
    bodies[3] = {"x": [0.0]}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(server.post, bodies))
    assert [code for code, _ in answers] == [200, 200, 200, 422, 200, 200, 200, 200]
    for i, (code, answer) in enumerate(answers):
        if code == 200:
            got = [answer["probabilities"][0][str(c)] for c in range(10)]
            np.testing.assert_allclose(got, expected[i], atol=1e-6)
    assert server.post({"x": x_test[0].tolist()})[0] == 200  # still serving
    assert server.proc.poll() is None
    server.stop = signal.SIGINT  # closed by Ctrl-C (the other tests' servers: SIGTERM)


@needs("table")
def test_a_table_by_column_name(serving, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_table import write_churn

    churn = write_churn(tmp_path / "churn.csv", n=300)
    run = tmp_path / "run"
    run_train(run, "data=table", f"data.path={churn}", "data.target=churn", "data.drop=[customer_id]", *FAST)
    expected = predicted(run, churn, tmp_path)[:5]
    server = serving(run / "checkpoints/best.ckpt")
    import csv

    with churn.open() as f:
        rows = [dict(r) for r, _ in zip(csv.DictReader(f), range(5), strict=False)]
    for row in rows:
        row["age"], row["income"] = int(row["age"]), float(row["income"])
        del row["churn"]
    code, answer = server.post({"rows": rows})
    assert code == 200, answer
    probs = np.array([[p["no"], p["yes"]] for p in answer["probabilities"]])
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert set(answer["predictions"]) <= {"no", "yes"}
    missing = {k: v for k, v in rows[0].items() if k != "city"}
    assert_refused(server, {"rows": [missing]}, "city")
    assert_refused(server, {"rows": [rows[0] | {"city": "Atlantis"}]}, "Atlantis")
    assert_refused(server, {"rows": "age=3"}, '"rows" is not a list of objects')
    body, content_type = form(("churn.csv", churn.read_bytes()))
    assert_refused(
        server, body, 'this model (table) takes JSON, {"rows": ...}', 415, content_type=content_type
    )
    assert server.post({"rows": rows})[0] == 200


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> tuple[Path, list[Path], np.ndarray]:
    """A run trained on 200 digit PNGs, four of its PNGs, and what `lightfit predict` gives them."""
    require("images")
    sys.path.insert(0, str(Path(__file__).parent))
    from test_images import write_digits

    tmp_path = tmp_path_factory.mktemp("digits")
    photos = write_digits(tmp_path / "digits", 200)
    run = tmp_path / "run"
    run_train(
        run, "data=images", f"data.path={photos}", "data.channels=1", f"data.cache={tmp_path / 'c'}", *FAST
    )
    files = sorted(photos.rglob("*.png"))[:4]
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, f in enumerate(files):
        (flat / f"{i}.png").write_bytes(f.read_bytes())
    return run, files, predicted(run, flat, tmp_path)


def probabilities(run: Path, answer: dict) -> np.ndarray:
    """An answer's probabilities (N, C), in the order of the run's classes (predict's columns)."""
    classes = json.loads((run / "results.json").read_text())["classes"]
    assert all(sorted(p) == sorted(classes) for p in answer["probabilities"]), answer
    return np.array([[p[c] for c in classes] for p in answer["probabilities"]])


def test_images_as_base64(serving, digits_run):
    from PIL import Image

    run, files, expected = digits_run
    server = serving(run / "checkpoints/best.ckpt", "max_image_pixels=1000")
    code, answer = server.post({"images": [base64.b64encode(f.read_bytes()).decode() for f in files]})
    assert code == 200, answer
    np.testing.assert_allclose(probabilities(run, answer), expected, atol=1e-6)

    assert_refused(server, {"images": ["%%%"]}, "image 0 is not base64")
    text = base64.b64encode(b"plain text, not a PNG").decode()
    assert_refused(server, {"images": [text]}, "image 0 is not an image Pillow can read")
    big = io.BytesIO()
    Image.new("L", (40, 40)).save(big, "PNG")  # 1600 pixels, over max_image_pixels=1000
    assert_refused(
        server, {"images": [base64.b64encode(big.getvalue()).decode()]}, "more pixels than the limit"
    )
    assert server.post({"images": [base64.b64encode(files[0].read_bytes()).decode()]})[0] == 200


def test_images_as_uploaded_files(serving, digits_run):
    """`curl -F file=@a.png -F file=@b.png`: the answer of the same images sent as base64, and
    predict's; each bad upload refused in one line; uploads and JSON batched together."""
    from PIL import Image

    run, files, expected = digits_run
    server = serving(run / "checkpoints/best.ckpt", "max_image_pixels=1000", "max_body_mb=0.05",
                     "batch_timeout=0.05")  # fmt: skip
    photos = [(f.name, f.read_bytes()) for f in files]
    code, answer = upload(server, *photos)
    assert code == 200, answer
    np.testing.assert_allclose(probabilities(run, answer), expected, atol=1e-6)
    assert answer == server.post({"images": [base64.b64encode(data).decode() for _, data in photos]})[1]
    code, answer = upload(server, photos[2])  # one file
    assert code == 200, answer
    np.testing.assert_allclose(probabilities(run, answer), expected[2:3], atol=1e-6)

    def refused(body_and_type: tuple[bytes, str], needle: str, status: int = 422) -> None:
        assert_refused(server, body_and_type[0], needle, status, content_type=body_and_type[1])

    refused(form(("notes.txt", b"plain text, not a PNG")), "file 'notes.txt' is not an image Pillow can read")
    big = io.BytesIO()
    Image.new("L", (40, 40)).save(big, "PNG")  # 1600 pixels, over max_image_pixels=1000
    refused(
        form(photos[0], ("big.png", big.getvalue())), "file 'big.png' has more pixels than the limit (1000)"
    )
    refused(
        form(*photos, field="image"), "the form has parts ['image', 'image', 'image', 'image'] that are not"
    )
    refused(form(), "the form has no file")
    refused((b"--x\r\n", "multipart/form-data"), "the form cannot be read", status=400)  # no boundary
    code, answer = upload(server, ("noise.png", os.urandom(100_000)))  # over max_body_mb=0.05
    assert code == 413, answer

    # Uploads, base64 JSON and one bad upload sent at once (batch_timeout=0.05: batched
    # together): only the bad one is refused.
    def send(i: int) -> tuple[int, dict]:
        if i == 3:
            return upload(server, ("notes.txt", b"not a PNG"))
        if i % 2:
            return server.post({"images": [base64.b64encode(photos[i % 4][1]).decode()]})
        return upload(server, photos[i % 4])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))
    assert [code for code, _ in answers] == [200, 200, 200, 422, 200, 200, 200, 200]
    for i, (code, answer) in enumerate(answers):
        if code == 200:
            np.testing.assert_allclose(probabilities(run, answer), expected[i % 4 : i % 4 + 1], atol=1e-6)
    assert upload(server, photos[0])[0] == 200  # still serving
    assert server.post({"images": [base64.b64encode(photos[0][1]).decode()]})[0] == 200
    assert server.proc.poll() is None


def test_a_bad_checkpoint_is_one_line(tmp_path):
    proc = cli(f"ckpt_path={tmp_path / 'none.ckpt'}", module="lightfit serve")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "checkpoint not found" in proc.stderr
    assert os.listdir(tmp_path) == []


def test_bad_batch_thread_and_server_counts_are_one_line(digits_run):
    run, _, _ = digits_run
    for bad, expected in (("max_batch_size=0", "max_batch_size=0 must be at least 1"),
                          ("threads=0", "threads=0 must be at least 1"),
                          ("api_servers=0", "api_servers=0 must be at least 1")):  # fmt: skip
        proc = cli(f"ckpt_path={run / 'checkpoints/best.ckpt'}", bad, module="lightfit serve")
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
        assert expected in proc.stderr
