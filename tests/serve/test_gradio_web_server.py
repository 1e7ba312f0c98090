"""The web demo (`llava.serve.gradio_web_server`) through Gradio's own Python client, against a
server the tests start on 127.0.0.1 with the tiny ProxyV checkpoint: upload and ask, streaming,
multi-turn, the prefill report, bad input answered in the page while the server keeps serving, and
two sessions at once keeping their own conversations. Skipped when the `serve` extra is not installed.
"""

from __future__ import annotations

import socket
import struct
import threading
import zlib
from pathlib import Path

import pytest

from tests.optional import import_extra

gradio_client = import_extra("gradio_client")
import_extra("gradio")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from llava.eval.run_llava import answer  # noqa: E402
from llava.serve import gradio_web_server as web  # noqa: E402
from llava.serve.cli import ChatSession  # noqa: E402
from llava.serve.inference import load_images  # noqa: E402

GREEDY = {"temperature": 0.0, "top_p": 0.7, "max_new_tokens": 12, "time_dense": False}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims `width` x `height` (no real pixel data): PIL reads its size
    without decoding, as it does for a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def server(tiny_assets):
    """The demo on the tiny ProxyV checkpoint, as `main` builds and launches it, on a free port."""
    args = web.parse_args(["--model-path", str(tiny_assets.llava_proxyv), "--device", "cpu",
                           "--port", str(_free_port())])
    web.check_args(args)
    chat = web.load_chat(args)
    demo = web.build_demo(chat, web.example_images(count=2))
    web.launch(demo, args, block=False)
    yield chat, f"http://127.0.0.1:{args.port}/"
    demo.close()


@pytest.fixture(scope="module")
def images(tiny_assets):
    return [str(path) for path in sorted((tiny_assets.data / "images").glob("*.png"))[:3]]


def ask(client: Client, paths: list[str], question: str, **options):
    """Submit one question; (streamed outputs, final chat history, report line)."""
    values = {**GREEDY, **options}
    job = client.submit([handle_file(path) for path in paths], question, values["temperature"], values["top_p"],
                        values["max_new_tokens"], values["time_dense"], api_name="/ask")
    history, cleared, report = job.result(timeout=120)
    assert cleared == ""
    return job.outputs(), history, report


def texts(history) -> list[str]:
    """The text of each chat message (images shown in the chat have none)."""
    return [part["text"] for message in history for part in message["content"] if part["type"] == "text"]


def reply_of(history) -> str:
    """The last answer without the report line under it."""
    return texts(history)[-1].split("\n\n<sub>")[0]


def reference_session(chat, paths: list[str], max_new_tokens: int = GREEDY["max_new_tokens"]) -> ChatSession:
    """The chat CLI's session on the same model and images, greedy."""
    return ChatSession(chat.tokenizer, chat.model, chat.image_processor, load_images(",".join(paths)), chat.conv_mode,
                       chat.context_len, temperature=0.0, max_new_tokens=max_new_tokens)


def test_upload_ask_streams_the_answer_run_llava_gives(server, images):
    chat, url = server
    client = Client(url, verbose=False)
    question = "What color is the background?"
    outputs, history, report = ask(client, images[:1], question, max_new_tokens=16)
    expected = answer(chat.tokenizer, chat.model, chat.image_processor, load_images(images[0]), question,
                      chat.conv_mode, max_new_tokens=16)
    assert reply_of(history) == expected
    assert texts(history)[:-1] == [question]  # the image is shown as a file, then the question
    assert history[0]["content"][0]["type"] == "file"
    streamed = [texts(output[0])[-1] for output in outputs[:-1] if len(texts(output[0])) > 1]
    assert len(streamed) >= 2 and all(b.startswith(a) for a, b in zip(streamed, streamed[1:]))
    assert expected.startswith(streamed[-1].strip()) or streamed[-1].strip().startswith(expected)
    assert report in texts(history)[-1] and "% fewer than the dense model" in report


def test_turns_continue_the_conversation_and_new_images_start_a_new_one(server, images):
    chat, url = server
    client = Client(url, verbose=False)
    session = reference_session(chat, images[:2])
    first, second = "What shape is in the image?", "Is there any text in the image?"
    _, history, _ = ask(client, images[:2], first)
    assert reply_of(history) == session.ask(first)
    _, history, _ = ask(client, images[:2], second)
    assert reply_of(history) == session.ask(second)
    assert texts(history)[:3] == [first, texts(history)[1], second] and len(texts(history)) == 4
    _, history, _ = ask(client, images[2:3], second)  # other images: a fresh conversation
    assert texts(history)[:-1] == [second] and reply_of(history) == reference_session(chat, images[2:3]).ask(second)
    client.predict(api_name="/clear")
    _, history, _ = ask(client, images[:2], first)
    assert texts(history)[:-1] == [first]


def test_bad_input_is_a_message_in_the_page_and_the_server_keeps_serving(server, images, tmp_path):
    chat, url = server
    client = Client(url, verbose=False)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("these are notes, not a picture")
    cases = [
        ([str(not_an_image)], "What is this?", "notes.png is not an image this server can read"),
        ([str(_png_header_only(tmp_path / "bomb.png", 30000, 30000))], "Hi?", "bomb.png is over the decompression-bomb limit"),
        ([str(_png_header_only(tmp_path / "huge.png", 8000, 6000))], "Hi?", "huge.png is 8000x6000 (48 megapixels), more than this server accepts"),
        (images[:1], "   ", "The question is empty"),
        (images[:1], "word " * (chat.context_len + 10), "more than the model's context of .* tokens. Press Clear"),
    ]
    for paths, question, message in cases:
        with pytest.raises(AppError, match=message.replace("(", r"\(").replace(")", r"\)")):
            ask(client, paths, question)
    _, history, _ = ask(client, images[:1], "What shape is in the image?")  # still serving, same client
    assert texts(history)[0] == "What shape is in the image?"


def test_two_sessions_at_once_keep_their_own_conversations(server, images):
    chat, url = server
    questions = ["What color is the background?", "How many shapes are there in the image?"]
    sessions = {index: reference_session(chat, images[index:index + 1]) for index in range(2)}
    expected = {index: [sessions[index].ask(q) for q in questions] for index in range(2)}
    got: dict[int, list[str]] = {}

    def converse(index: int):
        client = Client(url, verbose=False)
        got[index] = [reply_of(ask(client, images[index:index + 1], q)[1]) for q in questions]

    threads = [threading.Thread(target=converse, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert got == expected


def test_the_dense_prefill_is_timed_on_request(server, images):
    chat, url = server
    _, history, report = ask(Client(url, verbose=False), images[:1], "What shape is in the image?", time_dense=True)
    assert "s dense (" in report and "timed again on this input" in report
    twin = chat.dense_twin()
    assert all(p.data_ptr() == q.data_ptr() for p, q in zip(twin.model.embed_tokens.parameters(),
                                                            chat.model.model.embed_tokens.parameters()))


def test_bad_options_stop_before_loading(capsys):
    from llava.errors import run_main

    assert run_main(web.main, ["--port", "70000"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err
    assert run_main(web.main, ["--conv-mode", "nope"]) == 2
    assert "is not a conversation template" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert run_main(web.main, ["--port", str(taken.getsockname()[1])]) == 2
    assert "pass another --port" in capsys.readouterr().err


def test_a_closed_request_stops_generating_and_releases_the_model(server, images):
    """Gradio closes the answer's generator when a page goes away: generation stops at the next token
    (ChatSession's should_stop), the lock is released, and the next question is answered."""
    chat, _ = server
    stream = chat.respond(web.ChatState(), images[:1], "Describe the image briefly.", 0.0, 0.7, 200, False)
    next(stream)  # the first streamed piece: generation is running
    stream.close()
    assert not chat.lock.locked()
    *_, (history, state, _, report) = chat.respond(web.ChatState(), images[:1], "What shape is in the image?",
                                                  0.0, 0.7, 8, False)
    assert texts_of(history)[-2] == "What shape is in the image?" and report


def texts_of(history) -> list[str]:
    """The text of each message as the server returns it (before Gradio serialises it)."""
    return [message["content"] for message in history if isinstance(message["content"], str)]
