"""The LitAPI of `lightfit serve` (cli/serve.py): LitServe's hooks around `serve.Model`.

A module of its own because it imports LitServe (the `serve` extra) at the top, and LitServe's
worker process rebuilds the API by importing its class by name. No `from __future__ import
annotations` here: LitServe reads decode_request's annotation as an object (see `Body`).
"""

import contextlib
import json
import time
from queue import Empty
from typing import Annotated, Any

import litserve as ls
import numpy as np
from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from lightfit.cli.serve import Model, Refused, Upload

try:  # LitServe 0.2's loop and two private names of it (GreedyBatchLoop); should a later LitServe
    # move them, the server batches with LitServe's own loop instead of failing to start
    from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
    from litserve.loops.simple_loops import BatchedLoop

    GREEDY = True
except ImportError:  # pragma: no cover - not with the LitServe versions pyproject allows today
    BatchedLoop, GREEDY = object, False

NOT_AN_OBJECT = "the body is not a JSON object (send it with Content-Type: application/json)"


class BadBody(Exception):
    """A body refused by the API server before it reaches the model's worker: status, one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def read_body(request: Request) -> dict | Upload:
    """The body as a JSON object, or a multipart form's files as bytes (Upload).

    JSON is read as FastAPI reads a `dict` body (the annotation this replaced): only with a
    JSON Content-Type, `application/json` or `...+json`. A body over `max_body_mb` stops in
    LitServe's middleware while it is read here, answered 413 as before.
    """
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        return await read_upload(request)
    body = await request.body()
    if not body or not (
        media == "application/json" or (media.startswith("application/") and media.endswith("+json"))
    ):
        raise BadBody(422, NOT_AN_OBJECT)
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise BadBody(422, f"the body is not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise BadBody(422, "the body is not valid JSON (not UTF-8)") from None
    if not isinstance(value, dict):
        raise BadBody(422, NOT_AN_OBJECT)
    return value


async def read_upload(request: Request) -> Upload:
    """The form's files named "file", read whole here, so that what crosses LitServe's queue
    to the model's worker is plain bytes and names, and Starlette's files are closed at once."""
    try:
        form = await request.form()  # Starlette's parser (python-multipart)
    except HTTPException as exc:
        if exc.status_code != 400:  # 413: the body limit, answered as for JSON
            raise
        raise BadBody(400, f"the form cannot be read ({exc.detail})") from None
    try:
        files, others = [], []
        for name, value in form.multi_items():
            if name == "file" and isinstance(value, UploadFile):
                files.append((value.filename or "", await value.read()))
            else:
                others.append(name)
    finally:
        await form.close()
    return Upload(files, others)


# LitServe makes decode_request's annotation the type of its endpoint's `request` parameter
# and passes what FastAPI gives there to decode_request. Its default, a Starlette Request, has
# LitServe read the body: a form, or JSON with a 500 and a traceback for a body that is not
# JSON. This dependency reads it instead: FastAPI calls read_body for each request.
Body = Annotated[dict | Upload, Depends(read_body)]


class GreedyBatchLoop(BatchedLoop):
    """LitServe's batched loop, but a batch is what is waiting when the worker is free.

    LitServe's own loop fills a batch by asking the request queue (a multiprocessing Manager
    queue: each ask is a round trip to another process) once a millisecond until
    `max_batch_size` requests came or `batch_timeout` passed, even when no request is waiting.
    That costs CPU per request that batching does not share, and a lone request always waits
    the whole `batch_timeout`. Here the worker blocks until one request comes, then takes
    those already queued behind it, up to `max_batch_size`, and waits `batch_timeout` more
    (0: not at all) only if the queue ran dry first. Under load, requests queue up while a
    batch runs, so the batches fill by themselves; a lone request runs at once.
    """

    def get_batch_requests(self, lit_api: ls.LitAPI, request_queue: Any, transport: Any) -> tuple[list, list]:
        try:
            items = [request_queue.get(timeout=1.0)]  # idle: one blocking ask, not a poll
        except Empty:
            return [], []
        except (EOFError, OSError):  # the queue's manager process has ended: the server stops
            raise _StopLoopError() from None
        try:
            # qsize: one ask for how many wait, cheaper than a get_nowait that fails after the
            # last one (an exception sent back); a count gone stale (workers > 1) ends in Empty
            for _ in range(min(request_queue.qsize(), lit_api.max_batch_size - 1)):
                items.append(request_queue.get_nowait())
            deadline = time.monotonic() + lit_api.batch_timeout
            while len(items) < lit_api.max_batch_size and (left := deadline - time.monotonic()) > 0:
                items.append(request_queue.get(timeout=left))
        except Empty:
            pass
        except (EOFError, OSError):
            raise _StopLoopError() from None
        payloads, timed_out = [], []
        for item in items:
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, x_enc = item
            waited = time.monotonic() - timestamp
            if lit_api.request_timeout not in (-1, False) and waited > lit_api.request_timeout:
                timed_out.append((response_queue_id, uid))
            else:
                payloads.append((response_queue_id, uid, x_enc))
        return payloads, timed_out


class CheckpointAPI(ls.LitAPI):
    """decode_request checks each request on its own; predict runs the good ones as one batch."""

    def __init__(
        self, ckpt_path: str, max_image_pixels: int | None, max_batch_size: int, batch_timeout: float,
        threads: int = 1,
    ) -> None:  # fmt: skip
        greedy = GREEDY and max_batch_size > 1  # 1: LitServe's loop, one by one
        loop = GreedyBatchLoop() if greedy else "auto"
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, loop=loop)
        self.ckpt_path, self.max_image_pixels, self.threads = ckpt_path, max_image_pixels, threads

    def setup(self, device: str) -> None:
        import signal

        import torch

        # In the model's worker process. Ctrl-C reaches every process of the terminal's group:
        # the command then stops this worker itself; a KeyboardInterrupt here would print a
        # traceback from wherever the worker was waiting.
        with contextlib.suppress(ValueError):  # not the process's main thread: nothing to do
            signal.signal(signal.SIGINT, signal.SIG_IGN)

        # torch's default, one thread a core, spins them for each forward pass: on a small
        # batch that busy wait costs more CPU than the pass, taken from the API server
        torch.set_num_threads(self.threads)
        self.model = Model(self.ckpt_path, self.max_image_pixels)

    def decode_request(self, request: Body) -> np.ndarray | Refused:
        return self.model.decode(request)

    def batch(self, inputs: list) -> list:
        return inputs  # concatenated in predict, around the refused ones

    def predict(self, batch: Any) -> Any:
        items = batch if isinstance(batch, list) else [batch]  # max_batch_size=1: one request
        good = [x for x in items if not isinstance(x, Refused)]
        outputs = self.model.predict(np.concatenate(good)) if good else None
        answers, start = [], 0
        for x in items:
            if isinstance(x, Refused):
                answers.append(x)
            else:
                answers.append(outputs[start : start + len(x)])
                start += len(x)
        return answers if isinstance(batch, list) else answers[0]

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output: Any) -> Any:
        if isinstance(output, Refused):  # this request only: raising here would fail its whole batch
            return JSONResponse({"error": output.message}, status_code=output.status)
        # JSON made here, as FastAPI would make it from the dict, not in the API server: there
        # it costs the more (its jsonable_encoder), and that process serves every request
        return JSONResponse(self.model.answer(output))


async def allow_all() -> None:
    """Every request may ask: what LitServe checks without LIT_SERVER_API_KEY, but async.

    LitServe's own check is a plain function that does nothing; FastAPI runs a plain
    dependency in a thread, a hop that cost a quarter of the API server's CPU time per
    request. As `CheckpointAPI.authorize` it runs in the event loop instead."""


async def bad_body(request: Request, exc: BadBody) -> JSONResponse:
    """A body refused by read_body, answered with one line like every refusal."""
    return JSONResponse({"error": exc.message}, status_code=exc.status)
