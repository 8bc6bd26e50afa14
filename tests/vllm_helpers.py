"""A stand-in for vLLM's OpenAI-compatible server: payloads shaped like its documented API, recorded."""

from __future__ import annotations

import json
import threading

from flask import Flask, Response, request

# What vLLM streams for a two-token reply ending in EOS (id 2), as its OpenAI-compatible server sends it.
RECORDED_STREAM = [
    {"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "MODEL",
     "choices": [{"index": 0, "text": "It ships", "logprobs": {
         "text_offset": [0], "token_logprobs": [-0.25], "tokens": ["token_id:17"],
         "top_logprobs": [{"token_id:17": -0.25}]}, "finish_reason": None, "stop_reason": None}], "usage": None},
    {"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "MODEL",
     "choices": [{"index": 0, "text": " today.", "logprobs": {
         "text_offset": [8], "token_logprobs": [-1.5], "tokens": ["token_id:42"],
         "top_logprobs": [{"token_id:42": -1.5}]}, "finish_reason": None, "stop_reason": None}], "usage": None},
    {"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "MODEL",
     "choices": [{"index": 0, "text": "", "logprobs": {
         "text_offset": [15], "token_logprobs": [-0.01], "tokens": ["token_id:2"],
         "top_logprobs": [{"token_id:2": -0.01}]}, "finish_reason": "stop", "stop_reason": None}], "usage": None},
]


def sse_lines(chunks: list[dict]) -> list[str]:
    return [line for c in chunks for line in (f"data: {json.dumps(c)}", "")] + ["data: [DONE]", ""]


class StandInVllm:
    """An HTTP server answering like vLLM's OpenAI-compatible server, recording what it was sent."""

    def __init__(self, eos_id: int):
        self.eos_id = eos_id
        self.completions: list[dict] = []
        self.loads: list[dict] = []
        self.unloads: list[dict] = []
        self.replying = threading.Event()  # cleared: completions wait until it is set again
        self.replying.set()
        self.app = Flask("stand-in-vllm")
        self.app.get("/health")(lambda: "")
        self.app.post("/v1/load_lora_adapter")(self._load)
        self.app.post("/v1/unload_lora_adapter")(self._unload)
        self.app.post("/v1/completions")(self._complete)

    def _load(self) -> str:
        self.loads.append(request.json)
        return f"Success: LoRA adapter '{request.json['lora_name']}' added successfully."

    def _unload(self) -> str:
        self.unloads.append(request.json)
        return f"Success: LoRA adapter '{request.json['lora_name']}' removed successfully."

    def _complete(self) -> Response:
        self.completions.append(request.json)
        self.replying.wait(timeout=30)
        chunks = json.loads(json.dumps(RECORDED_STREAM).replace('"token_id:2"', f'"token_id:{self.eos_id}"'))
        return Response("\n".join(sse_lines(chunks)) + "\n", mimetype="text/event-stream")
