"""Publish from a FastAPI application: a route stores nothing, it pushes.

The server runs with an API key (`python -m engine serve --api-key-file
key.txt`); this application gets the same key and the API's URL from its
environment (ENGINE_API_KEY, ENGINE_API_URL):

    ENGINE_API_KEY=... uvicorn examples.publish_fastapi:app --port 8000
    curl -X POST localhost:8000/rooms/lobby/messages -H 'Content-Type: application/json' \\
         -d '{"user": "ann", "text": "hello"}'

and every CometD client subscribed to /chat/lobby gets {"user": "ann", "text": "hello"}.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from engine.client import ApiError, AsyncPublisher


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One publisher (a pool of keep-alive connections) for the application's life.
    url = os.environ.get("ENGINE_API_URL", "http://127.0.0.1:8080/api")
    async with AsyncPublisher(url, os.environ["ENGINE_API_KEY"]) as publisher:
        app.state.publisher = publisher
        yield


app = FastAPI(lifespan=lifespan)


class ChatMessage(BaseModel):
    user: str
    text: str


@app.post("/rooms/{room}/messages")
async def post_message(room: str, message: ChatMessage) -> dict[str, str]:
    try:
        await app.state.publisher.publish(f"/chat/{room}", message.model_dump())
    except ApiError as error:  # refused (a bad room name, the policy) or unreachable
        raise HTTPException(status_code=502, detail=error.message) from error
    return {"published": f"/chat/{room}"}
