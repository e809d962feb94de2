"""transfer serve under stress: a signal drains the requests in flight (their clients get whole answers, new
connections are refused, the wait is bounded), every logged field is escaped, and a bad --host is one Error line."""

import io
import json
import signal
import socket
import time

import pytest
from PIL import Image

from conftest import invoke
from test_serve import b64, call, start, stop


def _png(size=32, colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


def _address(url: str) -> tuple[str, int]:
    host, port = url.split("//")[1].rsplit(":", 1)
    return host, int(port)


def _begin(url: str, body: bytes, sent: int, path="/v1/models/colours:predict") -> socket.socket:
    """A POST whose headers and first ``sent`` bytes of ``body`` are on their way: a request in flight."""
    sock = socket.create_connection(_address(url), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:sent])
    return sock


def _answer(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the answer, read to the end of the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _refused(url: str, timeout=10) -> bool:
    """Whether new connections are refused within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(_address(url), timeout=2).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_request_in_flight_at_a_signal_gets_its_whole_answer_then_the_server_exits_0(trained_run, tmp_path,
                                                                                       stop_signal):
    log = tmp_path / "stderr.log"
    proc, url = start(trained_run["run"], log=log)
    body = json.dumps({"instances": [b64(_png())] * 4}).encode()
    try:
        idle = socket.create_connection(_address(url), timeout=30)  # a client that connected and sent nothing
        sock = _begin(url, body, len(body) // 2)
        time.sleep(1)  # the server has read the first half
        proc.send_signal(stop_signal)
        assert _refused(url), "the server still accepts connections"
        sock.sendall(body[len(body) // 2:])
        status, answer = _answer(sock)
        assert proc.wait(timeout=20) == 0
        assert idle.recv(1) == b""  # closed by the server, not left hanging
    finally:
        stop(proc)
    assert status == 200 and len(answer["predictions"]) == 4, answer
    assert answer["predictions"][0]["classes"][0] == "red"
    text = log.read_text()
    assert "stopping: no new connections; finishing 1 request(s) in flight (at most 30s)" in text, text
    assert '"POST /v1/models/colours:predict" 200' in text
    assert text.rstrip().endswith("stopped") and "Traceback" not in text and "cut off" not in text


def test_a_request_that_never_ends_is_cut_off_at_drain_timeout(trained_run, tmp_path):
    log = tmp_path / "stderr.log"
    proc, url = start(trained_run["run"], "--drain-timeout", "2", log=log)
    try:
        sock = _begin(url, b'{"instances": []}' * 10, 5)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert proc.wait(timeout=20) == 0
        assert 1.5 < time.monotonic() - signalled < 10
        assert sock.recv(1) == b""
    finally:
        stop(proc)
    text = log.read_text()
    assert "1 request(s) still in flight were cut off (--drain-timeout 2s)" in text, text
    assert text.rstrip().endswith("stopped") and "Traceback" not in text


def test_a_second_signal_stops_the_drain_at_once(trained_run, tmp_path):
    log = tmp_path / "stderr.log"
    proc, url = start(trained_run["run"], log=log)
    try:
        sock = _begin(url, b"{}" * 100, 5)  # kept open: in flight until the end
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        sock.close()
    finally:
        stop(proc)
    assert "1 request(s) still in flight were cut off (a second signal)" in log.read_text()


@pytest.fixture(scope="module")
def limited(trained_run, tmp_path_factory):
    """One server for the tests that need no signal: --max-pixels 1000, its stderr in ``log``."""
    log = tmp_path_factory.mktemp("limited") / "stderr.log"
    proc, url = start(trained_run["run"], "--max-pixels", 1000, log=log)
    yield {"url": url, "log": log}
    stop(proc)


def _logged(log, fragment: str, timeout=10) -> list[str]:
    """The lines of ``log`` that hold ``fragment``, once there is one (a request is logged after its answer)."""
    deadline = time.monotonic() + timeout
    while not (lines := [line for line in log.read_text().splitlines() if fragment in line]):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return lines


def test_the_decoded_path_and_the_user_agent_are_logged_escaped(limited):
    """Through waitress: the decoded path (CR LF, ESC, NUL, DEL, C1, a line separator, a bidirectional override,
    quotes) and a user agent of C1 controls (bytes 0x80-0x9f are legal in a header) stay one printable line."""
    url, log = limited["url"], limited["log"]
    path = "/v1/x%0d%0aforged%20200%1b[31m%00%7f%c2%85%e2%80%a8%e2%80%ae%22%5c"
    sock = socket.create_connection(_address(url), timeout=30)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: agent\x9b2J\x85\tend\r\n"
                 "Connection: close\r\n\r\n".encode("latin-1"))
    assert _answer(sock)[0] == 400
    assert call(url + "/v1/models/colours")[0] == 200  # still serving
    lines = _logged(log, "/v1/x")
    assert len(lines) == 1, log.read_text()
    assert lines[0] == (r'127.0.0.1 "GET /v1/x\x0d\x0aforged 200\x1b[31m\x00\x7f\x85\u2028\u202e\x22\x5c" 400 '
                        + lines[0].split(" 400 ")[1].split()[0] + r' "agent\x9b2J\x85\x09end"'), lines[0]
    assert all(c.isprintable() or c == "\n" for c in log.read_text())


def test_every_logged_field_goes_through_the_one_escape(caplog):
    """The method, the client address and the user agent too, whatever a WSGI server lets through."""
    from types import SimpleNamespace

    from werkzeug.test import Client

    from transfer.serve import make_app

    client = Client(make_app(SimpleNamespace(name="colours", version="1")))
    with caplog.at_level("INFO", logger="transfer"):
        client.open("/v1/\x1b]0;x\x07", method="G\x00T",
                    environ_overrides={"REMOTE_ADDR": "1.2.3.4\n5", "HTTP_USER_AGENT": "a\r\nb\x1bc"})
    assert caplog.messages == [r'1.2.3.4\x0a5 "G\x00T /v1/\x1b]0;x\x07" 400 '
                               + caplog.messages[0].split(" 400 ")[1].split()[0] + r' "a\x0d\x0ab\x1bc"']


def test_printable_escapes_every_control_character():
    from transfer.serve import printable

    controls = [chr(c) for c in [*range(0x20), 0x7f, *range(0x80, 0xa0), 0x2028, 0x2029, 0x202e, 0x200b]]
    for c in controls:
        assert printable(c) in (f"\\x{ord(c):02x}", f"\\u{ord(c):04x}"), repr(c)
    assert printable('a "b" \\ é 日本') == r"a \x22b\x22 \x5c é 日本"
    assert printable(None) == "None"


@pytest.mark.parametrize("host", ["bad", "", "999.1.1.1", "exa mple"])
def test_a_bad_host_is_one_error_line(trained_run, never_serves, host):
    result = invoke("serve", trained_run["run"], "--host", host, "--port", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"Error: --host {host!r} is not an address of this machine") or \
        error.startswith(f"Error: --host must be an address to listen on, such as 127.0.0.1 or 0.0.0.0; got {host!r}")


@pytest.mark.parametrize("case, expected", {
    "host=None": "--host must be an address to listen on, such as 127.0.0.1 or 0.0.0.0; got None.",
    "host=5": "--host must be an address to listen on, such as 127.0.0.1 or 0.0.0.0; got 5.",
    "host=''": "--host must be an address to listen on, such as 127.0.0.1 or 0.0.0.0; got ''.",
    "host='bad'": "--host 'bad' is not an address of this machine",
    "drain_timeout=-1": "--drain-timeout must be a number of seconds of at least 0; got -1.",
    "drain_timeout=float('nan')": "--drain-timeout must be a number of seconds of at least 0; got nan.",
    "max_pixels=0": "--max-pixels must be a whole number of at least 1; got 0."}.items())
def test_make_server_refuses_bad_arguments_with_a_clear_error(trained_run, case, expected):
    """From Python: each bad argument is a ConfigError that names it."""
    from transfer.errors import ConfigError
    from transfer.serve import make_server

    with pytest.raises(ConfigError) as raised:
        eval(f"make_server(run, port=0, {case})", {"make_server": make_server, "run": trained_run["run"]})
    assert str(raised.value).startswith(expected), (str(raised.value), expected)


def test_max_pixels_is_an_option_of_serve_and_its_error_names_it(limited):
    small = call(limited["url"] + "/v1/models/colours:predict", {"instances": [b64(_png(16))]})
    large = call(limited["url"] + "/v1/models/colours:predict", {"instances": [b64(_png(32))]})
    assert small[0] == 200
    assert large[0] == 400 and "over the limit of 1000 (--max-pixels)" in large[1]["error"], large
