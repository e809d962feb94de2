"""transfer serve: TF Serving's REST API on a free localhost port, spoken to by a real HTTP client (urllib)."""

import base64
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from conftest import invoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.path.join(ROOT, "..", "shared", "data", "cats_vs_dogs", "validation")
MAX_BATCH, MAX_BODY = 4, 200_000


def start(*args, log):
    """``transfer serve ... --port 0`` as a subprocess; (process, base URL) once it says where it listens."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", *map(str, args), "--port", "0"], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"serving (http://127\.0\.0\.1:\d+)/v1/models/", open(log).read())
        if found:
            return proc, found.group(1)
        time.sleep(0.2)
    stop(proc)
    raise AssertionError(f"transfer serve did not start: {open(log).read()[-2000:]}")


def stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    """The conftest scratch run served once for the module; always killed at the end."""
    log = tmp_path_factory.mktemp("serve") / "stderr.log"
    proc, url = start(trained_run["run"], "--max-batch", MAX_BATCH, "--max-body", MAX_BODY, log=log)
    yield {"url": url, "log": log, "proc": proc}
    stop(proc)


@pytest.fixture(scope="module")
def images(trained_run, tmp_path_factory):
    """JPEGs of the generated colours (and a few real photos, where they are): the files and their bytes."""
    folder = tmp_path_factory.mktemp("jpegs")
    for path in sorted(glob.glob(os.path.join(trained_run["data"], "*", "00[0-2].png"))):
        label = os.path.basename(os.path.dirname(path))
        Image.open(path).convert("RGB").save(folder / f"{label}-{os.path.basename(path)[:3]}.jpg", quality=90)
    for path in sorted(glob.glob(os.path.join(PHOTOS, "*", "*.jpg")))[:3]:
        shutil.copy(path, folder)
    paths = sorted(glob.glob(str(folder / "*.jpg")))
    return {"folder": str(folder), "paths": paths, "bytes": [open(p, "rb").read() for p in paths]}


def call(url, body=None, method=None):
    """(status, JSON answer) of one request; ``body`` is sent as it is (bytes) or as JSON."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def b64(content):
    return {"b64": base64.b64encode(content).decode()}


def test_status_and_metadata_are_as_tf_serving_answers(server):
    assert call(server["url"] + "/v1/models/colours") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    status, metadata = call(server["url"] + "/v1/models/colours/metadata")
    assert status == 200 and metadata["model_spec"] == {"name": "colours", "signature_name": "", "version": "1"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert list(signature["inputs"]) == ["image_bytes"] and set(signature["outputs"]) == {"probabilities", "classes",
                                                                                         "scores"}


def test_b64_jpegs_get_the_labels_of_transfer_predict(server, images, trained_run):
    result = CliRunner().invoke(main, ["predict", trained_run["run"], images["folder"], "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    expected = {p["path"]: p["label"] for p in json.loads(result.stdout)["predictions"]}
    assert len(expected) == len(images["paths"]) >= 9
    rows = [b64(content) for content in images["bytes"]]
    answers = []
    for start_at in range(0, len(rows), MAX_BATCH):
        chunk = rows[start_at:start_at + MAX_BATCH]
        status, answer = call(server["url"] + "/v1/models/colours:predict", {"instances": chunk})
        assert status == 200, answer
        answers += answer["predictions"]
    assert [a["classes"][0] for a in answers] == [expected[p] for p in images["paths"]]
    for a in answers:
        assert set(a) == {"probabilities", "classes", "scores"} and len(a["probabilities"]) == 3
        assert len(a["classes"]) == 3 and a["scores"] == sorted(a["probabilities"], reverse=True)
        assert abs(sum(a["probabilities"]) - 1) < 1e-4


def test_named_input_version_path_and_columnar_requests_agree(server, images):
    rows = [b64(content) for content in images["bytes"][:3]]
    _, plain = call(server["url"] + "/v1/models/colours:predict", {"instances": rows})
    status, named = call(server["url"] + "/v1/models/colours/versions/1:predict",
                         {"instances": [{"image_bytes": row} for row in rows], "signature_name": "serving_default"})
    assert status == 200 and named == plain
    status, columnar = call(server["url"] + "/v1/models/colours:predict", {"inputs": {"image_bytes": rows}})
    assert status == 200 and set(columnar) == {"outputs"}
    assert columnar["outputs"]["classes"] == [p["classes"] for p in plain["predictions"]]
    assert columnar["outputs"]["probabilities"] == [p["probabilities"] for p in plain["predictions"]]


def _malformed(jpeg):
    """(what, method, path, body, expected status): 20+ requests a client can get wrong."""
    png_as_text = base64.b64encode(b"just some text, not an image").decode()
    return [
        ("not JSON", "POST", ":predict", b"instances please", 400),
        ("empty body", "POST", ":predict", b"", 400),
        ("not UTF-8", "POST", ":predict", b"\xff\xfe{\x00", 400),
        ("a JSON list", "POST", ":predict", [], 400),
        ("no instances or inputs", "POST", ":predict", {}, 400),
        ("both instances and inputs", "POST", ":predict", {"instances": [jpeg], "inputs": [jpeg]}, 400),
        ("instances not a list", "POST", ":predict", {"instances": "abc"}, 400),
        ("no instances", "POST", ":predict", {"instances": []}, 400),
        ("instance not an object", "POST", ":predict", {"instances": [1]}, 400),
        ("b64 not a string", "POST", ":predict", {"instances": [{"b64": 5}]}, 400),
        ("not base64", "POST", ":predict", {"instances": [{"b64": "!!not base64!!"}]}, 400),
        ("not an image", "POST", ":predict", {"instances": [jpeg, {"b64": png_as_text}]}, 400),
        ("truncated JPEG", "POST", ":predict",
         {"instances": [{"b64": base64.b64encode(base64.b64decode(jpeg["b64"])[:200]).decode()}]}, 400),
        ("extra key", "POST", ":predict", {"instances": [{"image_bytes": jpeg, "other": 1}]}, 400),
        ("too many instances", "POST", ":predict", {"instances": [jpeg] * (MAX_BATCH + 1)}, 400),
        ("another signature", "POST", ":predict", {"instances": [jpeg], "signature_name": "classify"}, 400),
        ("nested too deep", "POST", ":predict", b"[" * 100_000 + b"]" * 100_000, 400),
        ("body over --max-body", "POST", ":predict", {"instances": [{"b64": "A" * MAX_BODY}]}, 413),
        ("GET a prediction", "GET", ":predict", None, 400),
        ("unknown verb", "POST", ":classify", {"instances": [jpeg]}, 400),
        ("another model", "POST", "/v1/models/other:predict", {"instances": [jpeg]}, 404),
        ("another version", "POST", "/v1/models/colours/versions/7:predict", {"instances": [jpeg]}, 404),
        ("another path", "GET", "/v2/nothing", None, 404),
    ]


def test_malformed_requests_get_a_json_error_and_the_server_goes_on(server, images):
    jpeg = b64(images["bytes"][0])
    cases = _malformed(jpeg)
    assert len(cases) >= 20
    for what, method, path, body, expected in cases:
        url = server["url"] + (path if path.startswith("/") else "/v1/models/colours" + path)
        status, answer = call(url, body, method)
        assert (status, set(answer)) == (expected, {"error"}), (what, status, answer)
        assert isinstance(answer["error"], str) and answer["error"], what
        assert server["proc"].poll() is None, f"the server died on: {what}"
    assert call(server["url"] + "/v1/models/colours:predict", {"instances": [jpeg]})[0] == 200
    log = open(server["log"]).read()
    assert '"POST /v1/models/colours:predict" 413' in log and "Traceback" not in log


def test_the_errors_say_what_is_wrong(server, images):
    jpeg = b64(images["bytes"][0])
    url = server["url"] + "/v1/models/colours:predict"
    assert "instances[1]: not an image" in call(url, {"instances": [jpeg, b64(b"text")]})[1]["error"]
    assert f"over the limit of {MAX_BATCH} (--max-batch)" in call(url, {"instances": [jpeg] * 5})[1]["error"]
    assert "Servable not found for request: Latest(other)" in call(
        server["url"] + "/v1/models/other:predict", {"instances": [jpeg]})[1]["error"]


def test_a_busy_port_is_a_clear_error(trained_run, server, never_serves):
    """(Ctrl-C and SIGTERM end the server cleanly, exit status 0, with the requests in flight answered:
    test_serve_hardening.py, which took over this test's two signalled servers.)"""
    port = server["url"].rsplit(":", 1)[1]
    busy = invoke("serve", trained_run["run"], "--port", port)
    assert busy.returncode == 1 and f"Error: cannot listen on 127.0.0.1:{port}" in busy.stderr
    assert "Traceback" not in busy.stderr


def test_missing_extra_names_the_pip_line(trained_run, runner, monkeypatch):
    monkeypatch.setitem(sys.modules, "waitress", None)  # what `import waitress` meets when it is not installed
    result = runner.invoke(main, ["serve", trained_run["run"], "--port", "0"])
    assert result.exit_code == 1 and "pip install 'transfer[serve]'" in result.output


def test_concurrent_requests_each_get_their_own_answer(server, images):
    """waitress answers on 4 threads; the model sees one batch at a time, and no answer is mixed up."""
    from concurrent.futures import ThreadPoolExecutor

    url = server["url"] + "/v1/models/colours:predict"
    single = [call(url, {"instances": [b64(content)]})[1]["predictions"][0]["classes"][0]
              for content in images["bytes"]]
    requests = [[b64(images["bytes"][i]), b64(images["bytes"][(i + 1) % len(single)])] for i in range(len(single))]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda body: call(url, {"instances": body}), requests))
    for i, (status, answer) in enumerate(answers):
        assert status == 200
        assert [p["classes"][0] for p in answer["predictions"]] == [single[i], single[(i + 1) % len(single)]]
