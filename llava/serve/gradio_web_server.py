"""`python -m llava.serve.gradio_web_server`: chat with a LLaVA / ProxyV model about images in the
browser, as LLaVA's web demo, and see what each prefill cost.

    python -m llava.serve.gradio_web_server --model-path CHECKPOINT [--model-base BASE] [--port 7860]

Upload one or more images, ask, and the answer streams in; the dialogue continues over turns about
the same images (new images start a new conversation). Under every answer a line gives the prefill
time, the vision tokens and crops and, for a ProxyV (or PyramidDrop / VisionZip) model, its total
prefill FLOPs against the same weights run dense (`llava.serve.prefill_report`); a checkbox also
times the dense prefill on the same input. With no `--model-path` it serves the embedded tiny ProxyV
default, building it if missing, like `run_llava`.

Bad input (a file that is not an image, an image over `--max-image-pixels` or PIL's
decompression-bomb limit, an empty question, a conversation past the model's context) is a message
in the page; the server keeps serving. Requests wait in one queue, so one answer is generated at a
time, and each browser tab keeps its own conversation. Gradio is an optional extra:
`pip install -e ".[serve]"`. The server listens on 127.0.0.1 unless `--host` says otherwise; `--share`
asks Gradio's outside servers for a public link, which needs internet access.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import random
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError
from transformers import TextIteratorStreamer

from llava.errors import DamagedInputError, UsageError, UserError, one_line, run_main
from llava.mm_utils import ImageTooLargeError, load_image
from llava.model.backends import ATTN_IMPLEMENTATIONS
from llava.serve.cli import ChatSession
from llava.serve.inference import (
    check_conv_mode,
    check_device,
    check_generation_options,
    check_text,
    default_conv_mode,
    load_model,
)
from llava.serve.prefill_report import prefill_report, time_against_dense

logger = logging.getLogger(__name__)

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
OPTION_NAMES = {"temperature": "Temperature", "top_p": "Top p", "max_new_tokens": "Max new tokens"}
TOO_LONG_HINT = "Press Clear to start a new conversation, ask a shorter question, or lower Max new tokens."
EXAMPLE_QUESTIONS = ("What color is the background?", "What shape is in the image?",
                     "How many shapes are there in the image?", "Is there any text in the image?")


@dataclass
class ChatState:
    """One browser session's conversation: its images, the template's messages (what the next prompt
    is built from) and what the chat shows."""

    image_paths: list[str] = field(default_factory=list)
    messages: list = field(default_factory=list)
    history: list[dict] = field(default_factory=list)


class TimedTextStreamer(TextIteratorStreamer):
    """The reply's text as `generate` makes it, plus when its first token came (the prefill's end)."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.first_token_at: float | None = None

    def put(self, value):
        if not self.next_tokens_are_prompt and self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        super().put(value)


def open_upload(path: str, max_pixels: int) -> Image.Image:
    """An uploaded file as an RGB image; UserError naming the file when it is not an image, larger
    than `max_pixels` or over PIL's decompression-bomb limit. The size is read before decoding."""
    name = os.path.basename(path)
    try:
        with Image.open(path) as probe:
            width, height = probe.size
    except Image.DecompressionBombError as error:
        raise DamagedInputError(f"{name} is over the decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} "
                                f"pixels ({one_line(error)}); upload a smaller image.") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DamagedInputError(f"{name} is not an image this server can read; upload a PNG, JPEG, WebP, "
                                "GIF or BMP file.") from error
    if width * height > max_pixels:
        raise UsageError(f"{name} is {width}x{height} ({width * height / 1e6:.0f} megapixels), more than this "
                         f"server accepts ({max_pixels / 1e6:.0f} megapixels, --max-image-pixels); downscale it.")
    try:
        return load_image(path)
    except (ImageTooLargeError, ValueError) as error:  # truncated or damaged past its header
        raise DamagedInputError(f"{name} cannot be decoded ({one_line(error)}); upload the image again or "
                                "another file.") from error


class WebChat:
    """The loaded model and what every browser session shares; `respond` streams one answer."""

    def __init__(self, tokenizer, model, image_processor, context_len: int, conv_mode: str, model_name: str,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, quantized: bool = False):
        self.tokenizer, self.model, self.image_processor = tokenizer, model, image_processor
        self.context_len, self.conv_mode, self.model_name = context_len, conv_mode, model_name
        self.max_image_pixels, self.quantized = max_image_pixels, quantized
        self.lock = threading.Lock()
        self._dense_twin = None

    @property
    def dense(self) -> bool:
        from llava.model.dense_twin import is_dense

        return is_dense(self.model.config)

    def dense_twin(self):
        """The same weights run dense (built on first use, sharing the weights)."""
        if self._dense_twin is None:
            from llava.model.dense_twin import dense_twin

            self._dense_twin = dense_twin(self.model)
        return self._dense_twin

    def respond(self, state: ChatState, paths, question: str, temperature: float, top_p: float,
                max_new_tokens: float, time_dense: bool):
        """Stream (chat history, state, cleared question box, report line) for one question; a problem
        with the request is a message in the page (`gradio.Error`) and leaves the conversation as it was."""
        import gradio as gr

        try:
            request = self._check_request(state, paths, question, temperature, top_p, max_new_tokens, time_dense)
            yield from self._answer(*request)
        except UserError as error:
            logger.warning("Refused a request: %s", one_line(error))
            raise gr.Error(one_line(error), title="Cannot answer", print_exception=False) from error

    def _check_request(self, state, paths, question, temperature, top_p, max_new_tokens, time_dense):
        question = check_text((question or "").strip(), "The question")
        if not question:
            raise UsageError("The question is empty; type a question about the images.")
        max_new_tokens = int(max_new_tokens)
        check_generation_options(float(temperature), max_new_tokens, float(top_p), names=OPTION_NAMES)
        paths = [str(path) for path in paths or []]
        if paths and self.image_processor is None:
            raise UsageError(f"{self.model_name} has no vision tower; ask without images.")
        if time_dense and self.quantized:
            raise UsageError("Timing the dense model is not available for a 4-/8-bit model; untick it.")
        images = [open_upload(path, self.max_image_pixels) for path in paths]
        if paths != state.image_paths:
            state = ChatState(image_paths=paths)  # other images: a new conversation
        return state, images, question, float(temperature), float(top_p), max_new_tokens, bool(time_dense)

    def _answer(self, state, images, question, temperature, top_p, max_new_tokens, time_dense):
        streamer, cancelled = TimedTextStreamer(self.tokenizer), threading.Event()
        session = ChatSession(self.tokenizer, self.model, self.image_processor, images, self.conv_mode,
                              self.context_len, temperature, max_new_tokens, streamer, top_p, state.messages,
                              should_stop=cancelled.is_set, too_long_hint=TOO_LONG_HINT)
        shown = [{"role": "user", "content": {"path": path}} for path in state.image_paths if not state.history]
        history = [*state.history, *shown, {"role": "user", "content": question}]
        outcome: dict = {}

        def generate():
            try:
                outcome["reply"] = session.ask(question)
            except BaseException as error:  # handed to the request's thread below
                outcome["error"] = error
                streamer.end()

        with self.lock:
            start = time.perf_counter()
            worker = threading.Thread(target=generate, daemon=True)
            worker.start()
            streamed = False
            try:
                partial = ""
                for text in streamer:
                    partial += text
                    yield [*history, {"role": "assistant", "content": partial}], state, "", ""
                streamed = True
            finally:  # a closed page or cancelled request closes this generator: stop generating first
                if not streamed:
                    cancelled.set()
                worker.join()
            if "error" in outcome:
                raise outcome["error"]
            prefill_s = streamer.first_token_at - start if streamer.first_token_at else None
            report = prefill_report(self.model, session.last_input_ids, session.pixels, prefill_s, session.image_sizes)
            if time_dense and not self.dense:
                time_against_dense(report, self.model, self.dense_twin(), session.last_input_ids, session.pixels,
                                   session.image_sizes)
        line = report.line()
        logger.info("Answered (%s)", line)
        history.append({"role": "assistant", "content": f"{outcome['reply']}\n\n<sub>{line}</sub>"})
        new_state = ChatState(state.image_paths, [list(m) for m in session.conversation.messages], history)
        yield history, new_state, "", line


# ----------------------------------------------------------------------------- the page


def example_images(count: int = 3, seed: int = 2026) -> list[str]:
    """A few pictures of the tiny dataset's kind (coloured shapes, sometimes text), rendered afresh."""
    from llava.tiny.images import random_scene, render_scene

    folder = tempfile.mkdtemp(prefix="llava-demo-examples-")
    rng, paths = random.Random(seed), []
    for index in range(count):
        path = os.path.join(folder, f"scene_{index}.png")
        render_scene(random_scene(rng)).save(path)
        paths.append(path)
    return paths


def describe_model(chat: WebChat) -> str:
    """The page's header line: which model, and where its ProxyV layers start."""
    config = chat.model.config
    kind = f"{type(chat.model).__name__}, {config.num_hidden_layers} layers"
    if getattr(config, "proxyv_start_layer", None) is not None:
        kind += f", ProxyV from layer {config.proxyv_start_layer}"
    return f"**Model:** `{chat.model_name}` ({kind}; template `{chat.conv_mode}`)"


def build_demo(chat: WebChat, examples: list[str]):
    """The Gradio page around `chat`; `examples` are image paths offered with example questions."""
    import gradio as gr

    max_tokens = max(1, min(1024, chat.context_len))
    with gr.Blocks(title="LLaVA / ProxyV chat", analytics_enabled=False) as demo:
        gr.Markdown(f"## Chat about images\n{describe_model(chat)}")
        state = gr.State(ChatState())
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Images", file_count="multiple", file_types=["image"], type="filepath")
                temperature = gr.Slider(0.0, 1.0, value=0.2, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1.0, value=0.7, step=0.05, label="Top p")
                max_new_tokens = gr.Slider(1, max_tokens, value=min(512, max_tokens), step=1, label="Max new tokens")
                time_dense = gr.Checkbox(False, label="Also time the dense model's prefill on the same input",
                                         visible=not chat.dense and not chat.quantized)
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Conversation", height=460)
                question = gr.Textbox(label="Question", placeholder="Ask about the images and press Enter")
                with gr.Row():
                    send = gr.Button("Send", variant="primary")
                    clear = gr.Button("Clear")
                report = gr.Markdown()
        gr.Examples([[[path], text] for path, text in zip(examples, EXAMPLE_QUESTIONS)], inputs=[files, question])
        inputs = [state, files, question, temperature, top_p, max_new_tokens, time_dense]
        outputs = [chatbot, state, question, report]
        # One queue for both ways of asking: one answer is generated at a time.
        question.submit(chat.respond, inputs, outputs, api_name="ask", concurrency_id="answer")
        send.click(chat.respond, inputs, outputs, api_name=False, concurrency_id="answer")
        clear.click(lambda: ([], ChatState(), "", "", None), None, [chatbot, state, question, report, files],
                    api_name="clear")
        files.change(lambda paths: ([], ChatState(), "New images: a new conversation starts." if paths else ""),
                     files, [chatbot, state, report], api_name=False)
    demo.queue(default_concurrency_limit=1)
    return demo


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Chat with a LLaVA / ProxyV model about images in the browser.")
    parser.add_argument("--model-path", default=None, help="checkpoint folder or hub name (default: the tiny ProxyV)")
    parser.add_argument("--model-base", default=None, help="for a stage-1 (projector-only) or LoRA folder")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--conv-mode", default=None, help="template (default: the checkpoint's)")
    parser.add_argument("--attn-implementation", default="sdpa", choices=ATTN_IMPLEMENTATIONS)
    parser.add_argument("--load-8bit", action="store_true", help="8-bit weights (CUDA + bitsandbytes)")
    parser.add_argument("--load-4bit", action="store_true", help="4-bit weights (CUDA + bitsandbytes)")
    parser.add_argument("--share", action="store_true", help="a public link through Gradio's servers (needs internet)")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="largest image accepted, in pixels (default: %(default)s)")
    parser.add_argument("--max-file-size", default="50mb", help="largest upload, as Gradio reads it (default: 50mb)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Bad option values and a missing Gradio, before anything loads; UsageError."""
    if importlib.util.find_spec("gradio") is None:
        raise UsageError('The web demo needs Gradio, an optional extra: pip install -e ".[serve]".')
    args.device = check_device(args.device)
    check_conv_mode(args.conv_mode)
    if args.load_8bit and args.load_4bit:
        raise UsageError("Pass at most one of --load-8bit and --load-4bit.")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}.")
    check_port_free(args.host, args.port)
    if args.max_image_pixels < 1:
        raise UsageError(f"--max-image-pixels must be at least 1, got {args.max_image_pixels}.")


def check_port_free(host: str, port: int) -> None:
    """UsageError naming --port / --host when the address cannot be listened on (before the model loads)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UsageError(f"Cannot listen on {host}:{port} ({error.strerror or error}); another program may be "
                             "using it: pass another --port (or check --host).") from error


def load_chat(args: argparse.Namespace) -> WebChat:
    """The model of `--model-path` (the tiny ProxyV default, built if missing, when not given)."""
    model_path = args.model_path
    if model_path is None:
        from llava.tiny.build import build_tiny_assets

        model_path = str(build_tiny_assets().llava_proxyv)
        logger.info("No --model-path: serving the tiny ProxyV model %s (untrained: it shows the path, "
                    "not good answers; train it with the README's first command)", model_path)
    tokenizer, model, image_processor, context_len = load_model(
        model_path, args.model_base, device=args.device, attn_implementation=args.attn_implementation,
        load_8bit=args.load_8bit, load_4bit=args.load_4bit)
    conv_mode = args.conv_mode or default_conv_mode(model.config, tokenizer)
    return WebChat(tokenizer, model, image_processor, context_len, conv_mode, model_path, args.max_image_pixels,
                   quantized=args.load_8bit or args.load_4bit)


def launch(demo, args: argparse.Namespace, block: bool = True) -> None:
    """Serve `demo` on `--host:--port`; `block=False` returns once the server listens."""
    logger.info("Serving on http://%s:%d (Ctrl-C stops)", args.host, args.port)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=args.max_file_size,
                prevent_thread_lock=not block, quiet=True, show_error=True)


def main(argv=None) -> int:
    """Load the model and serve the page until Ctrl-C; problems the user can fix raise `UserError`."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own requests to itself, one line each
    check_args(args)
    chat = load_chat(args)
    launch(build_demo(chat, example_images()), args)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
