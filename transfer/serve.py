"""`transfer serve`: TensorFlow Serving's REST API for one model, on this machine.

A client written against it works unchanged against real TensorFlow Serving
running the SavedModel of ``transfer export`` (whose ``serving_default`` takes
``image_bytes``)::

    GET  /v1/models/<name>                              model status
    GET  /v1/models/<name>/metadata                     signature
    POST /v1/models/<name>[/versions/<v>]:predict        {"instances": [{"b64": "..."}, ...]}
                                                        or {"inputs": {"image_bytes": [{"b64": "..."}]}}

Row requests (``instances``) are answered ``{"predictions": [{"probabilities",
"classes", "scores"}, ...]}``, columnar ones (``inputs``) ``{"outputs": {...}}``,
as TF Serving does. Images are decoded by :func:`transfer.data.images.load_image`,
as `transfer predict` decodes files (Pillow, EXIF orientation, the run's resize
mode), so the labels are the same. A bad request gets a JSON ``{"error": ...}``
and status 400, 404 for another model's name or version (as TF Serving), and 413
for a body over ``max_body`` (a limit of this server). The HTTP side is
werkzeug (requests, responses) under waitress (a pure-Python WSGI server).
Ctrl-C or SIGTERM drains it (:meth:`Server.drain`); every field of its request
log is escaped (:func:`printable`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import os
import re
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np

from .config import SERVE_DRAIN_TIMEOUT, SERVE_HOST, SERVE_MAX_BATCH, SERVE_MAX_BODY, SERVE_PORT
from .errors import ConfigError, ImageError, first_line
from .data.images import MAX_PIXELS, load_image
from .runners import LoadedModel, load_model

log = logging.getLogger("transfer")

DEFAULT_HOST, DEFAULT_PORT, MAX_BATCH, MAX_BODY = SERVE_HOST, SERVE_PORT, SERVE_MAX_BATCH, SERVE_MAX_BODY
DRAIN_TIMEOUT = SERVE_DRAIN_TIMEOUT
TOP_K = 5
INPUT = "image_bytes"  # the name of the SavedModel's serving_default input
INSTALL = "pip install 'transfer[serve]'"
#: /v1/models/<name>[/versions/<version>][:predict | /metadata]
_ROUTE = re.compile(r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?P<verb>:predict|/metadata)?")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class RequestError(Exception):
    """A request the server refuses; the message goes back as ``{"error": ...}`` with ``status``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Model:
    """The one model served, and what its answers need."""

    loaded: LoadedModel
    name: str
    version: str
    max_batch: int = MAX_BATCH
    max_pixels: int = MAX_PIXELS

    def __post_init__(self):
        self.lock = threading.Lock()  # one batch at a time through the model; decoding runs in parallel
        self.k = min(TOP_K, len(self.loaded.labels))

    def predict(self, images: np.ndarray) -> dict[str, list]:
        """Columns of the answer: probabilities [N, C], classes and scores [N, k], best first."""
        with self.lock:
            probabilities = np.asarray(self.loaded.predict_batch(images), np.float64)
        order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :self.k]
        return {"probabilities": probabilities.tolist(),
                "classes": [[self.loaded.labels[j] for j in row] for row in order],
                "scores": np.take_along_axis(probabilities, order, -1).tolist()}


def make_app(model: Model, max_body: int = MAX_BODY):
    """The WSGI application: every answer is JSON, every request is logged to stderr."""
    from werkzeug.exceptions import HTTPException
    from werkzeug.wrappers import Request, Response

    def app(environ, start_response):
        request = Request(environ)
        request.max_content_length = max_body
        started = time.perf_counter()
        try:
            status, body = 200, _route(model, request)
        except RequestError as error:
            status, body = error.status, {"error": str(error)}
        except HTTPException as error:  # werkzeug's own: a body over max_content_length
            status, body = error.code, {"error": _http_message(error, max_body)}
        except Exception as error:  # never a crash, never a traceback to the client
            log.exception("internal error")
            status, body = 500, {"error": f"internal error: {type(error).__name__}"}
        log.info('%s "%s %s" %d %.3fs "%s"', *map(printable, (request.remote_addr, request.method,
                                                              request.full_path.rstrip("?"))),
                 status, time.perf_counter() - started, printable(request.user_agent.string))
        return Response(json.dumps(body), status, mimetype="application/json")(environ, start_response)

    return app


def printable(value) -> str:
    """``value`` as text that stays one line of a log and sends nothing to a terminal: every character that is not
    printable (C0 and C1 controls, DEL, line separators, bidirectional overrides) becomes ``\\xNN`` or ``\\uNNNN``,
    and so do ``\\`` and ``"``, so that an escaped field cannot end the quotes around it or pass for an escape."""
    return "".join(_escape(c) if c in '\\"' or not c.isprintable() else c for c in str(value))


def _escape(character: str) -> str:
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _http_message(error, max_body: int) -> str:
    if error.code == 413:
        return f"request body over the limit of {max_body} bytes (--max-body); send fewer or smaller images"
    return error.description or error.name


def _route(model: Model, request) -> dict:
    """TF Serving's paths; like TF Serving, another model's name or version is a 404, so is a path outside /v1/,
    and another path under /v1/ is a 400."""
    if not request.path.startswith("/v1/"):
        raise RequestError(f"Not found: {request.path} (the API is under /v1/models/{model.name})", 404)
    match = _ROUTE.fullmatch(request.path)
    verb = match and match["verb"]
    if not match or request.method != ("POST" if verb == ":predict" else "GET"):
        raise RequestError(f"Malformed request: {request.method} {request.path}")
    if match["name"] != model.name or match["version"] not in (None, model.version):
        spec = f"Specific({match['name']}, {match['version']})" if match["version"] else f"Latest({match['name']})"
        raise RequestError(f"Servable not found for request: {spec}", 404)
    if verb == ":predict":
        return _predict(model, request.get_data())
    if verb == "/metadata":
        return _metadata(model)
    return {"model_version_status": [{"version": model.version, "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}


def _predict(model: Model, data: bytes) -> dict:
    """Row (``instances``) or columnar (``inputs``) requests of base64 images, answered in the same format."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError; nesting too deep recurses
        raise RequestError(f"JSON Parse error: {type(error).__name__}: {first_line(error)}") from None
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise RequestError('the body must be a JSON object with either "instances" or "inputs", e.g. '
                           '{"instances": [{"b64": "<base64 of a JPEG>"}]}')
    signature = body.get("signature_name", "serving_default")
    if signature != "serving_default":
        raise RequestError(f"Serving signature name: {signature!r} not found in signature def")
    rows = "instances" in body
    items = body["instances"] if rows else _columns(body["inputs"])
    if not isinstance(items, list) or not items:
        raise RequestError(f'"{"instances" if rows else "inputs"}" must be a non-empty list of images')
    if len(items) > model.max_batch:
        raise RequestError(f"{len(items)} images in one request, over the limit of {model.max_batch} (--max-batch); "
                           "split the request")
    where = "instances" if rows else "inputs"
    images = np.stack([_image(model, item, f"{where}[{i}]") for i, item in enumerate(items)])
    columns = model.predict(images.astype(np.float32))
    if not rows:
        return {"outputs": columns}
    return {"predictions": [dict(zip(columns, values)) for values in zip(*columns.values())]}


def _columns(inputs):
    """Columnar ``inputs``: the list of images itself, or ``{"image_bytes": [...]}`` naming the input."""
    if isinstance(inputs, dict) and set(inputs) == {INPUT}:
        return inputs[INPUT]
    if isinstance(inputs, dict) and set(inputs) == {"b64"}:
        return [inputs]  # one image, not in a list
    return inputs


def _image(model: Model, item, where: str) -> np.ndarray:
    """One ``{"b64": ...}`` (or ``{"image_bytes": {"b64": ...}}``) decoded as `transfer predict` decodes a file."""
    if isinstance(item, dict) and set(item) == {INPUT}:
        item = item[INPUT]
    if not (isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str)):
        raise RequestError(f'{where}: expected {{"b64": "<base64 of an encoded image>"}} '
                           f'(or {{"{INPUT}": {{"b64": ...}}}}), got {json.dumps(item)[:80]}')
    try:
        encoded = base64.b64decode(item["b64"], validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"{where}: b64 is not valid base64 ({error})") from None
    try:
        return load_image(io.BytesIO(encoded), model.loaded.image_size, model.loaded.resize, model.max_pixels)
    except ImageError as error:
        raise RequestError(f"{where}: {error}") from None


def _metadata(model: Model) -> dict:
    """TF Serving's GetModelMetadata answer, for the signature the SavedModel export writes."""
    def tensor(name, dtype, *dims):
        return {"dtype": dtype, "name": name, "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims],
                                                              "unknown_rank": False}}

    classes, k = len(model.loaded.labels), model.k
    signature = {"inputs": {INPUT: tensor(f"serving_default_{INPUT}:0", "DT_STRING", -1)},
                 "outputs": {"probabilities": tensor("probabilities", "DT_FLOAT", -1, classes),
                             "classes": tensor("classes", "DT_STRING", -1, k),
                             "scores": tensor("scores", "DT_FLOAT", -1, k)},
                 "method_name": "tensorflow/serving/predict"}
    return {"model_spec": {"name": model.name, "signature_name": "", "version": model.version},
            "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}}}


class Server:
    """A waitress server for one model; :meth:`run` until Ctrl-C or SIGTERM, then drain."""

    def __init__(self, model: Model, host: str, port: int, max_body: int, drain_timeout: float = DRAIN_TIMEOUT):
        try:
            import werkzeug  # noqa: F401  (make_app's requests and responses)
            from waitress import create_server
        except ImportError:
            raise ConfigError(f"transfer serve needs the optional packages waitress and werkzeug; install them with: "
                              f"{INSTALL}") from None
        self.model, self.drain_timeout, self.map = model, drain_timeout, {}
        try:
            # waitress cuts off bodies over twice the limit before reading them; the app answers the rest in JSON
            self.server = create_server(make_app(model, max_body), map=self.map, host=host, port=port, threads=4,
                                        max_request_body_size=2 * max_body + 2**16, ident="transfer")
        except OSError as error:
            raise ConfigError(f"cannot listen on {host}:{port} ({error.strerror or error}); choose another --port "
                              "or --host.") from None
        except ValueError:  # waitress: a host that does not resolve to an address
            raise ConfigError(f"--host {host!r} is not an address of this machine: give an IP address (127.0.0.1, "
                              "0.0.0.0 for every interface, ::1) or a host name that resolves to one.") from None
        self.host, self.port = host, self.server.effective_port
        self.signals: list[int] = []  # the stop signals received, in order

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1/models/{self.model.name}"

    def run(self) -> None:
        """Serve until Ctrl-C, or SIGTERM (``docker stop``, systemd); then :meth:`drain`.

        The signal only sets a flag that the loop reads between its polls: raised
        as an exception, it could cut a request off halfway through reading it.
        """
        previous = {}
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell's background job starts ignoring it
                previous[signum] = signal.signal(signum, lambda signum, frame: self.stop(signum))
        try:
            while not self.signals:
                self._poll()
            self.drain()
        finally:
            from waitress import wasyncore

            self.server.task_dispatcher.set_thread_count(0)  # its threads end once idle
            wasyncore.close_all(self.map)  # every socket
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask :meth:`run` to drain and return, as ``signum`` does (from a signal handler, or another thread)."""
        self.signals.append(signum)

    def drain(self) -> None:
        """Stop accepting connections; finish the requests in flight, at most ``drain_timeout`` seconds (a second
        signal: at once), and close each connection when its answer is sent."""
        from waitress.server import BaseWSGIServer

        from waitress import wasyncore

        for listener in [d for d in self.map.values() if isinstance(d, BaseWSGIServer)]:
            wasyncore.dispatcher.close(listener)  # the listening socket only; its trigger wakes the loop for answers
        deadline, seen = time.monotonic() + self.drain_timeout, len(self.signals)
        busy = self._busy()
        if busy:
            log.info("stopping: no new connections; finishing %d request(s) in flight (at most %ss)", len(busy),
                     f"{self.drain_timeout:g}")
        while busy and time.monotonic() < deadline and len(self.signals) == seen:
            self._poll()
            busy = self._busy()
        if busy:
            log.warning("%d request(s) still in flight were cut off (%s)", len(busy), "a second signal"
                        if len(self.signals) > seen else f"--drain-timeout {self.drain_timeout:g}s")

    def _poll(self) -> None:
        from waitress import wasyncore

        wasyncore.loop(timeout=0.2, map=self.map, use_poll=self.server.adj.asyncore_use_poll, count=1)

    def _busy(self) -> list:
        """The connections with a request in flight (being read, answered or sent); the idle ones are closed."""
        from waitress.channel import HTTPChannel

        channels = [d for d in list(self.map.values()) if isinstance(d, HTTPChannel)]
        busy = [c for c in channels if c.request is not None or c.requests or c.total_outbufs_len]
        for channel in channels:
            if channel not in busy:
                channel.handle_close()
        return busy


def make_server(model_path: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, name: str | None = None,
                max_batch: int = MAX_BATCH, max_body: int = MAX_BODY, unsafe: bool = False,
                max_pixels: int = MAX_PIXELS, drain_timeout: float = DRAIN_TIMEOUT) -> Server:
    """Load ``model_path`` (anything `transfer predict` takes) and bind ``host:port`` (0: a free port)."""
    if not isinstance(host, str) or not host.strip():
        raise ConfigError(f"--host must be an address to listen on, such as {DEFAULT_HOST} or 0.0.0.0; got {host!r}.")
    _check_whole("--port", port, 0, 65535)
    _check_whole("--max-batch", max_batch, 1)
    _check_whole("--max-body", max_body, 1)
    _check_whole("--max-pixels", max_pixels, 1)
    number = isinstance(drain_timeout, (int, float)) and not isinstance(drain_timeout, bool)
    if not number or not 0 <= drain_timeout < math.inf:
        raise ConfigError(f"--drain-timeout must be a number of seconds of at least 0; got {drain_timeout!r}.")
    if name is not None:
        _check_model_name(name, "--model-name")
    loaded = load_model(model_path, unsafe)
    name = name or _check_model_name(default_name(loaded), "the default model name (from the path)")
    return Server(Model(loaded, name, _version(loaded), max_batch, max_pixels), host, port, max_body, drain_timeout)


def _check_whole(option: str, value, least: int, most: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least or (most is not None and value > most):
        limits = f"from {least} to {most}" if most is not None else f"of at least {least}"
        raise ConfigError(f"{option} must be a whole number {limits}; got {value!r}.")


def _check_model_name(name: str, what: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{what} {name!r} cannot be part of a URL: use letters, digits, '.', '_' and '-' "
                          "(pass --model-name).")
    return name


def default_name(loaded: LoadedModel) -> str:
    """The run's name: the run folder, or the NAME of an export under ``DIR/NAME/<version | tflite-* | onnx>/``."""
    from . import runs

    path = os.path.abspath(loaded.source)  # a run's is its model.keras
    folder = os.path.dirname(path)
    if loaded.kind in ("run", "keras"):
        return os.path.basename(folder) if runs.is_run_folder(folder) else os.path.splitext(os.path.basename(path))[0]
    if loaded.kind == "savedmodel":
        return os.path.basename(folder) if os.path.basename(path).isdigit() else os.path.basename(path)
    exported = os.path.isfile(os.path.join(folder, runs.TFLITE_INFO_FILE))
    return os.path.basename(os.path.dirname(folder)) if exported else os.path.splitext(os.path.basename(path))[0]


def _version(loaded: LoadedModel) -> str:
    """A SavedModel's version folder names its version, as in TF Serving; anything else is version 1."""
    base = os.path.basename(os.path.abspath(loaded.source))
    return base if loaded.kind == "savedmodel" and base.isdigit() else "1"
