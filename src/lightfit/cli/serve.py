"""A checkpoint behind HTTP: `lightfit serve ckpt_path=... [host=127.0.0.1] [port=8000]`.

Built on LitServe (the `serve` extra), Lightning's serving library: it runs the HTTP server,
the worker that holds the model, `GET /health`, the body size limit and the queues between
them. lightfit supplies the model, how a batch forms (serve_api.GreedyBatchLoop: the requests
queued when the model is free, up to `max_batch_size`, go through the network as one batch,
with no wait for more unless `batch_timeout` asks for it) and the request format:

    POST /predict  {"x": [[...], ...]}                       arrays: one sample or a list of them
                   {"rows": [{"age": 41, "city": "Rome"}]}   a table: rows by column name
                   {"images": ["<base64 PNG or JPEG>", ...]}  images
                   multipart/form-data, files named "file"   images: curl -F file=@cat.png ...
    answer         {"predictions": [...], "probabilities": [{"<class>": p, ...}, ...]}

Predictions are label names (or class ids) for a classifier, with each class's probability,
or values in the target's units for a regression: what `lightfit predict` writes. Requests
are JSON or, for images, uploaded files; nothing from a client is unpickled. A bad request is
answered 4xx with one line, `{"error": "..."}`, and only that request: in a batch, each
request is checked on its own before the batch runs, so one bad request never fails the others.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import logging
import os
import re
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from lightfit.errors import LightfitError

log = logging.getLogger("lightfit")
EXTRA_HINT = "pip install 'lightfit[serve]'"
KEYS = {"arrays": "x", "table": "rows", "images": "images"}


@dataclass
class Upload:
    """A multipart/form-data body as the API server read it: the files named "file", in
    order, as (file name, bytes), and the names of the form's other parts."""

    files: list[tuple[str, bytes]]
    others: list[str]


@dataclass
class Refused:
    """A request that cannot be answered: its HTTP status and one line saying why."""

    status: int
    message: str


class Model:
    """The checkpoint's network and what turns a request into its input `x` (N, *input_shape)."""

    def __init__(self, ckpt_path: str | Path, max_image_pixels: int | None = None) -> None:
        import torch

        from lightfit.cli.predict import class_names
        from lightfit.run.checkpoint import CHECKPOINT_KEY, load_checkpoint, rebuild_network, task_config

        checkpoint = load_checkpoint(ckpt_path)
        self.stored = stored = checkpoint[CHECKPOINT_KEY]
        self.net = rebuild_network(checkpoint)
        self.regression = task_config(stored)["name"] == "regression"
        self.classes = None if self.regression else [str(c) for c in class_names(stored).tolist()]
        self.input_shape = tuple(stored["input_shape"])
        self.kind = "table" if "table" in stored else "images" if "images" in stored else "arrays"
        if self.kind == "table":
            from lightfit.cli.predict_table import stored_encoding

            self.encoding = stored_encoding(Path(ckpt_path), stored)
        if self.kind == "images":
            from PIL import Image

            if max_image_pixels:
                Image.MAX_IMAGE_PIXELS = int(max_image_pixels)  # past it: refused, not decoded
        torch.set_grad_enabled(False)  # this process only predicts

    def decode(self, request: Any) -> np.ndarray | Refused:
        """A request's body as x (N, *input_shape) float32, or why it cannot be."""
        key = KEYS[self.kind]
        if isinstance(request, Upload):
            if self.kind != "images":
                return Refused(
                    415,
                    f'this model ({self.kind}) takes JSON, {{"{key}": ...}}; files are for a model of images',
                )
            decode, value = self._decode_upload, request
        elif not isinstance(request, dict) or key not in request:
            return Refused(422, f'this model takes {{"{key}": ...}} ({self.kind}); got {_keys(request)}')
        else:
            decode, value = getattr(self, f"_decode_{self.kind}"), request[key]
        try:
            x = decode(value)
        except LightfitError as exc:
            return Refused(422, str(exc))
        if len(x) == 0:
            return Refused(422, f'"{key}" is empty')
        if not np.isfinite(x.reshape(len(x), -1)).all():
            return Refused(422, "the input has NaN or infinite values")
        return x

    def _decode_arrays(self, values: Any) -> np.ndarray:
        try:
            x = np.asarray(values, dtype=np.float32)
        except (ValueError, TypeError):
            raise LightfitError('"x" is not a list of numbers (or of equally long lists of them)') from None
        if x.shape == self.input_shape:
            x = x[None]  # one sample
        if tuple(x.shape[1:]) != self.input_shape:
            raise LightfitError(
                f'"x" has shape {list(x.shape)}; the model takes samples of shape {list(self.input_shape)} '
                "(one, or a list of them)"
            )
        return x

    def _decode_table(self, rows: Any) -> np.ndarray:
        import pyarrow as pa

        from lightfit.cli.predict_table import encode_table

        rows = [rows] if isinstance(rows, dict) else rows
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise LightfitError('"rows" is not a list of objects, {"column": value, ...}')
        try:
            table = pa.Table.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise LightfitError(f'"rows" cannot be read as a table: {str(exc).splitlines()[0]}') from None
        x, _ = encode_table(table, Path("the request"), self.encoding, [])
        return x

    def _decode_images(self, images: Any) -> np.ndarray:
        images = [images] if isinstance(images, str) else images
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise LightfitError('"images" is not a list of base64 strings (PNG or JPEG files)')
        x = np.empty((len(images), *self.input_shape), np.float32)
        for i, text in enumerate(images):
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise LightfitError(f"image {i} is not base64") from None
            x[i] = self._image(f"image {i}", data)
        return x

    def _decode_upload(self, upload: Upload) -> np.ndarray:
        if upload.others:
            raise LightfitError(
                f'the form has parts {upload.others} that are not files named "file"; send each image '
                "as one: curl -F file=@cat.png -F file=@dog.jpg ..."
            )
        if not upload.files:
            raise LightfitError("the form has no file; send each image as one: curl -F file=@cat.png ...")
        x = np.empty((len(upload.files), *self.input_shape), np.float32)
        for i, (name, data) in enumerate(upload.files):
            x[i] = self._image(f"file {name!r}", data)
        return x

    def _image(self, name: str, data: bytes) -> np.ndarray:
        """One encoded image (PNG, JPEG, ...) as the network's (C, H, W); `name` says which in a refusal."""
        from PIL import Image

        from lightfit.data.images import decode

        size, channels = self.input_shape[1:], self.input_shape[0]
        with warnings.catch_warnings():
            # Pillow warns past MAX_IMAGE_PIXELS and raises past twice that: refused either way
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                return decode(io.BytesIO(data), size, channels)
            except (Image.DecompressionBombWarning, Image.DecompressionBombError):
                raise LightfitError(
                    f"{name} has more pixels than the limit ({Image.MAX_IMAGE_PIXELS})"
                ) from None
            except LightfitError as exc:  # decode names the file: here a BytesIO, said as `name`
                if "exceeds limit" in str(exc):  # decode catches Pillow's error past twice the limit
                    raise LightfitError(
                        f"{name} has more pixels than the limit ({Image.MAX_IMAGE_PIXELS})"
                    ) from None
                reason = str(exc).split(" is not an image", 1)[-1]
                reason = re.sub(r" <_io\.BytesIO object at \w+>", "", reason)
                raise LightfitError(f"{name} is not an image{reason}") from None

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (N, C), or values in the target's units."""
        import torch

        outputs = self.net(torch.from_numpy(x))  # from_numpy: no copy
        return (outputs if self.regression else outputs.softmax(-1)).numpy()

    def answer(self, outputs: np.ndarray) -> dict[str, Any]:
        if self.regression:
            return {"predictions": outputs.tolist()}
        names = np.asarray(self.classes, dtype=object)
        return {
            "predictions": names[outputs.argmax(axis=1)].tolist(),
            "probabilities": [dict(zip(self.classes, row, strict=True)) for row in outputs.tolist()],
        }


def _keys(request: Any) -> str:
    return f"keys {sorted(request)}" if isinstance(request, dict) else type(request).__name__


def serve(cfg: DictConfig) -> None:
    """Check the checkpoint, then serve it until interrupted."""
    try:
        import litserve as ls
        import python_multipart  # noqa: F401  (FastAPI reads uploaded files with it)
    except ImportError:
        raise LightfitError(f"lightfit serve needs LitServe and python-multipart: {EXTRA_HINT}") from None
    Model(cfg.ckpt_path)  # a bad checkpoint: one line now, not in the server's worker
    for key in ("max_batch_size", "threads", "api_servers"):
        if int(cfg[key]) < 1:
            raise LightfitError(f"{key}={cfg[key]} must be at least 1")
    # serve_api imports LitServe at its top; LitServe's workers import CheckpointAPI by name
    from lightfit.cli.serve_api import BadBody, CheckpointAPI, allow_all, bad_body

    api = CheckpointAPI(
        str(cfg.ckpt_path), cfg.max_image_pixels, int(cfg.max_batch_size), float(cfg.batch_timeout),
        int(cfg.threads),
    )  # fmt: skip
    if not os.environ.get("LIT_SERVER_API_KEY"):  # with it, LitServe asks for the X-API-Key header
        api.authorize = allow_all
    server = ls.LitServer(
        api, accelerator="cpu", devices=1, workers_per_device=int(cfg.workers),
        max_payload_size=int(cfg.max_body_mb * 1024 * 1024), timeout=float(cfg.timeout),
    )  # fmt: skip
    server.app.add_exception_handler(BadBody, bad_body)
    # SIGTERM (kill, systemd, docker stop) as Ctrl-C: LitServe then stops its API servers and
    # the model's worker; without it they outlive the command, still listening.
    signal.signal(signal.SIGTERM, functools.partial(_interrupt, os.getpid()))
    log.info(f"serving {cfg.ckpt_path} at http://{cfg.host}:{cfg.port}/predict (GET /health)")
    server.run(host=cfg.host, port=int(cfg.port), generate_client_file=False,
               num_api_servers=int(cfg.api_servers), log_level="warning")  # fmt: skip


def _interrupt(command_pid: int, signum: int, frame: Any) -> None:
    if os.getpid() != command_pid:
        # An API server LitServe forked, which inherited this handler: stopped by LitServe
        # with SIGTERM, uvicorn shuts it down and raises the signal again at the end. Its
        # exit is quiet; a KeyboardInterrupt there would print a traceback after the answer.
        raise SystemExit(0)
    raise KeyboardInterrupt


def main(*, prog: str = "lightfit", config_module: str = "lightfit.conf") -> None:
    """`<prog> serve ckpt_path=... [host=127.0.0.1] [port=8000]`."""
    from lightfit.cli.entry import run_command

    run_command(serve, label=f"{prog}-serve", config_module=config_module, config_name="serve")


if __name__ == "__main__":
    main()
