"""The openai backend against a tiny OpenAI-compatible server started on 127.0.0.1 by the test."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

import pytest
from chat_fixtures import DET_CLASSES, serve_loopback

from backend.chat.facts import PerceptionOutput, build_fact_sheet
from backend.chat.lm import LMError, OpenAIBackend, make_backend
from backend.chat.router import answer_question


class FakeCompletions(BaseHTTPRequestHandler):
    """Speaks /v1/chat/completions: SSE when stream=true, plain JSON otherwise; records requests."""

    reply = "Hello"
    requests: list = []

    def log_message(self, *a):
        pass

    def do_POST(self):
        n = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(n))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.path != "/v1/chat/completions":
            self.send_response(404)
            self.end_headers()
            return
        if body.get("model") == "broken":
            self.send_response(400)
            msg = b'{"error": {"message": "model broken not found"}}'
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        if not body.get("stream"):
            msg = json.dumps({"choices": [{"message": {"role": "assistant", "content": self.reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        words = self.reply.split(" ")
        for i, w in enumerate(words):
            chunk = {"choices": [{"delta": {"content": w + (" " if i < len(words) - 1 else "")}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def fake_server():
    FakeCompletions.requests = []
    with serve_loopback(FakeCompletions) as url:
        yield url


def test_streaming_tokens_and_key_from_env(fake_server, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    FakeCompletions.reply = "There are three ships."
    lm = OpenAIBackend(fake_server, model="m1", api_key_env="MY_KEY")
    pieces: list[str] = []
    out = lm.generate([{"role": "user", "content": "hi"}], max_tokens=20, stop=["\n\n"], on_token=pieces.append)
    assert out == "There are three ships." and len(pieces) == 4
    req = FakeCompletions.requests[-1]
    assert req["auth"] == "Bearer sk-secret-123"
    assert req["body"]["stream"] is True and req["body"]["max_tokens"] == 20 and req["body"]["stop"] == ["\n\n"]
    assert "sk-secret" not in json.dumps(lm.describe())


def test_stop_sequence_cuts_the_answer(fake_server):
    FakeCompletions.reply = "Answer. QUESTION: next"
    assert OpenAIBackend(fake_server).generate([{"role": "user", "content": "x"}], stop=[" QUESTION:"]) == "Answer."


def test_http_errors_are_explained(fake_server):
    with pytest.raises(LMError, match="HTTP 400.*model broken"):
        OpenAIBackend(fake_server, model="broken").generate([{"role": "user", "content": "x"}])
    with pytest.raises(LMError, match="cannot reach"):
        OpenAIBackend("http://127.0.0.1:9/v1", timeout_s=2).generate([{"role": "user", "content": "x"}])
    with pytest.raises(LMError, match="http"):
        OpenAIBackend("file:///etc/passwd")


def test_grounded_answer_through_openai(fake_server, chat_fixture):
    sheet = build_fact_sheet(chat_fixture["raster"], [PerceptionOutput(chat_fixture["landcover"]),
                                                      PerceptionOutput(chat_fixture["detections"],
                                                                       classes=DET_CLASSES)])
    ship = sheet.for_class("ship", "count")[0].id
    FakeCompletions.reply = f"The image shows 3 ships [{ship}]. It also has 12 airplanes [F2]."
    lm = make_backend({"name": "openai", "base_url": fake_server})
    a = answer_question("Describe the image.", sheet, backend=lm)
    assert a.text == f"The image shows 3 ships [{ship}]."  # the invented airplanes are removed
    assert not a.verification["ok"] and "airplane" in a.verification["hallucinated_classes"]
    sent = FakeCompletions.requests[-1]["body"]["messages"]
    assert sent[0]["role"] == "system" and sheet.to_text() in sent[0]["content"]
    assert {o["id"] for o in a.objects} == {"O1", "O2", "O4"}
