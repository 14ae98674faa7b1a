"""The LitAPI of `lightfit serve` (cli/serve.py): LitServe's hooks around `serve.Model`.

A module of its own because it imports LitServe (the `serve` extra) at the top, and LitServe's
worker process rebuilds the API by importing its class by name.
"""

from __future__ import annotations

from typing import Any

import litserve as ls
import numpy as np
from fastapi.responses import JSONResponse

from lightfit.cli.serve import Model, Refused


class CheckpointAPI(ls.LitAPI):
    """decode_request checks each request on its own; predict runs the good ones as one batch."""

    def __init__(
        self, ckpt_path: str, max_image_pixels: int | None, max_batch_size: int, batch_timeout: float
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.ckpt_path, self.max_image_pixels = ckpt_path, max_image_pixels

    def setup(self, device: str) -> None:
        self.model = Model(self.ckpt_path, self.max_image_pixels)

    def decode_request(self, request: dict) -> np.ndarray | Refused:  # dict: FastAPI answers bad JSON 422
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
        return self.model.answer(output)


async def bad_body(request: Any, exc: Any) -> JSONResponse:
    """FastAPI's answer to a body that is not a JSON object, as one line like every refusal."""
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        message = f"the body is not valid JSON ({first.get('ctx', {}).get('error', first.get('msg'))})"
    else:
        message = "the body is not a JSON object (send it with Content-Type: application/json)"
    return JSONResponse({"error": message}, status_code=422)
