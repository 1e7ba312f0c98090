"""`python -m llava.serve.cli`: chat with a LLaVA / ProxyV checkpoint about images, as LLaVA's CLI.

Prints `USER: `, reads a line, streams the reply after `ASSISTANT: ` and keeps the dialogue across
turns; the first turn carries one `<image>` placeholder per image. An empty line, end of input
(Ctrl-D) or Ctrl-C ends the session with exit code 0. Lines are read with `input()`, so the chat
can be scripted through a pipe:

    printf 'What is in the image?\\nWhat colour is it?\\n' | python -m llava.serve.cli \\
        --model-path CHECKPOINT --image-file photo.jpg --temperature 0

Bad input is one `error: ...` line on stderr (`llava.errors.run_main`): exit code 2 for a bad option
or path (an unknown template or device, a negative temperature, a model path or image that does not
exist, 8/4-bit loading without CUDA, a message too long for the model's context), 1 for a file or
input that cannot be used (an unreadable image, a damaged checkpoint, a line of standard input that
is not UTF-8). The options are checked before the model loads. `--debug` prints each turn's prompt
and reply, and shows tracebacks.

The steps it shares with `python -m llava.eval.run_llava` live in `llava.serve.inference`.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import Conversation, get_conv_template
from llava.errors import DamagedInputError, UsageError, run_main
from llava.mm_utils import KeywordsStoppingCriteria, tokenizer_image_token
from llava.model.backends import ATTN_IMPLEMENTATIONS
from llava.serve.inference import (
    check_context_length,
    check_conv_mode,
    check_device,
    check_generation_options,
    check_text,
    default_conv_mode,
    generation_kwargs,
    load_images,
    load_model,
    pixels_for_model,
    prompt_length,
    stop_string,
    with_image_placeholders,
)

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- the dialogue


def stopping_criteria(conversation: Conversation, tokenizer, prompt_len: int) -> StoppingCriteriaList | None:
    """A keyword stop for templates whose stop string is not the EOS token (EOS always stops).

    `prompt_len`: how many leading ids the generation loop sees that are prompt, not reply (0 when
    the prompt goes in as image-expanded embeddings).
    """
    stop = stop_string(conversation)
    if not stop or stop == tokenizer.eos_token:
        return None
    prompt = torch.zeros((1, prompt_len), dtype=torch.long)
    return StoppingCriteriaList([KeywordsStoppingCriteria([stop], tokenizer, prompt)])


class StopWhen(StoppingCriteria):
    """Stops every sequence once `should_stop()` returns True (checked after each new token)."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), bool(self.should_stop()), dtype=torch.bool, device=input_ids.device)


def display_role(role: str, fallback: str) -> str:
    """A role as the user sees it: chat markers like `<|im_start|>` dropped."""
    return re.sub(r"<\|[^|]*\|>", "", role).strip() or fallback


class ChatSession:
    """One dialogue about a fixed set of images; `ask` adds a turn and returns the reply.

    The images go with every turn (the first turn's placeholders stay in the prompt); the whole
    conversation is the prompt of the next turn. `last_prompt` is the prompt of the latest turn and
    `last_input_ids` its ids. `messages` continues an earlier dialogue about the same images (the
    `conversation.messages` of a session that asked them). `should_stop` ends a reply early when it
    returns True (the web demo's cancelled requests); `too_long_hint` replaces the command-line advice
    when a turn does not fit the context.
    """

    def __init__(self, tokenizer, model, image_processor, images: list, conv_mode: str, context_len: int,
                 temperature: float = 0.2, max_new_tokens: int = 512, streamer=None, top_p: float | None = None,
                 messages: list | None = None, should_stop: Callable[[], bool] | None = None,
                 too_long_hint: str | None = None):
        check_generation_options(temperature, max_new_tokens, top_p)
        check_conv_mode(conv_mode, "conv_mode")
        self.conversation = get_conv_template(conv_mode)
        self.conversation.messages = [list(message) for message in messages or []]
        self.tokenizer, self.model, self.context_len = tokenizer, model, context_len
        self.num_images = len(images)
        self.pixels = pixels_for_model(images, image_processor, model) if images else None
        self.image_sizes = [image.size for image in images] if images else None
        self.generate_kwargs = generation_kwargs(tokenizer, temperature, max_new_tokens, top_p)
        self.streamer, self.should_stop, self.too_long_hint = streamer, should_stop, too_long_hint
        self.last_prompt: str | None = None
        self.last_input_ids: torch.Tensor | None = None

    @property
    def roles(self) -> tuple[str, str]:
        user, assistant = self.conversation.roles
        return display_role(user, "USER"), display_role(assistant, "ASSISTANT")

    def ask(self, text: str) -> str:
        """Generate the assistant's reply to `text` (streamed if a streamer was given) and keep it."""
        if not self.conversation.messages:
            text = with_image_placeholders(text, self.num_images)
        self.conversation.append_message(self.conversation.roles[0], text)
        self.conversation.append_message(self.conversation.roles[1], None)
        prompt = self.conversation.get_prompt()
        input_ids = tokenizer_image_token(prompt, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        try:
            self._check_length(input_ids)
        except ValueError:
            del self.conversation.messages[-2:]
            raise
        prompt_len = 0 if self.pixels is not None else input_ids.shape[0]
        output_ids = self.model.generate(
            input_ids[None].to(self.model.device),
            images=self.pixels,
            image_sizes=self.image_sizes,
            streamer=self.streamer,
            stopping_criteria=self._stopping_criteria(prompt_len),
            **self.generate_kwargs,
        )
        reply = self._clean(self.tokenizer.decode(output_ids[0], skip_special_tokens=True))
        self.conversation.messages[-1][-1] = reply
        self.last_prompt, self.last_input_ids = prompt, input_ids
        return reply

    def _stopping_criteria(self, prompt_len: int) -> StoppingCriteriaList | None:
        criteria = stopping_criteria(self.conversation, self.tokenizer, prompt_len) or StoppingCriteriaList()
        if self.should_stop is not None:
            criteria.append(StopWhen(self.should_stop))
        return criteria or None

    def _clean(self, text: str) -> str:
        text, stop = text.strip(), stop_string(self.conversation)
        if stop and stop.strip() and text.endswith(stop.strip()):
            text = text[: -len(stop.strip())].strip()
        return text

    def _check_length(self, input_ids: torch.Tensor) -> None:
        """The prompt with its images expanded, plus the reply, must fit the model's context
        (`llava.serve.inference.check_context_length`: a UsageError saying the limit)."""
        images = ", use fewer images," if self.pixels is not None else ""
        shorten = self.too_long_hint or (
            "Start a new session (or lower --max-new-tokens)." if len(self.conversation.messages) > 2 else
            f"Send a shorter message{images} or lower --max-new-tokens.")
        check_context_length(prompt_length(input_ids, self.pixels, self.model, self.image_sizes), self.generate_kwargs["max_new_tokens"],
                             self.context_len, shorten, what="The conversation", with_images=self.pixels is not None)


def read_line(prompt: str, line_number: int) -> str | None:
    """One line of input after `prompt`; None at end of input. A line that is not UTF-8 (a strict
    decoder's UnicodeDecodeError, or the lone surrogates of a `surrogateescape` one) is a
    DamagedInputError naming the line, not a tokenizer error later."""
    what = f"standard input line {line_number}"
    try:
        text = input(prompt)
    except EOFError:
        print()
        return None
    except UnicodeDecodeError as error:
        print()
        raise DamagedInputError(f"{what} is not valid UTF-8 text ({error.reason} at byte {error.start}); "
                                "re-encode the input as UTF-8.") from error
    try:
        return check_text(text, what)
    except DamagedInputError:
        print()  # end the prompt's line; the error line goes to stderr
        raise


def chat(session: ChatSession, debug: bool = False) -> None:
    """The read-reply loop until an empty line, end of input or Ctrl-C."""
    user, assistant = session.roles
    line_number = 0
    while True:
        line_number += 1
        try:
            text = read_line(f"{user}: ", line_number)
        except KeyboardInterrupt:
            print()
            return
        if text is None or not text.strip():
            return
        print(f"{assistant}: ", end="", flush=True)
        try:
            reply = session.ask(text)
        except KeyboardInterrupt:  # Ctrl-C while the reply streams ends the session, as at the prompt
            print()
            return
        except Exception:
            print()  # the error line goes to stderr; end the half-written assistant line first
            raise
        if session.streamer is None:
            print(reply)
        if debug:
            print(f"[debug] prompt: {session.last_prompt!r}\n[debug] reply: {reply!r}", flush=True)


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Chat with a LLaVA / ProxyV model about images. An empty line or Ctrl-D ends the chat."
    )
    parser.add_argument("--model-path", required=True, help="checkpoint folder or hub name")
    parser.add_argument("--model-base", default=None, help="for a stage-1 (projector-only) or LoRA folder: the model it was trained from")
    parser.add_argument("--image-file", default=None, help="image path(s) or URL(s), comma-separated")
    parser.add_argument("--conv-mode", default=None,
                        help="conversation template (default: the config's conv_template, else vicuna_v1)")
    parser.add_argument("--temperature", type=float, default=0.2, help="0 = greedy")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument("--load-8bit", action="store_true", help="8-bit weights (CUDA + bitsandbytes)")
    parser.add_argument("--load-4bit", action="store_true", help="4-bit weights (CUDA + bitsandbytes)")
    parser.add_argument("--attn-implementation", default="sdpa", choices=ATTN_IMPLEMENTATIONS,
                        help="attention backend (default: %(default)s)")
    parser.add_argument("--debug", action="store_true", help="print each prompt and reply; show tracebacks")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Reject bad option values before anything is loaded (the checks `run_llava` makes too); UsageError."""
    check_generation_options(args.temperature, args.max_new_tokens)
    args.device = check_device(args.device)
    check_conv_mode(args.conv_mode)
    if args.load_8bit and args.load_4bit:
        raise UsageError("Pass at most one of --load-8bit and --load-4bit.")


def start_session(args: argparse.Namespace) -> ChatSession:
    """Load the images and the model, pick the template, and open a streaming session."""
    images = load_images(args.image_file) if args.image_file else []
    tokenizer, model, image_processor, context_len = load_model(
        args.model_path, args.model_base, device=args.device, attn_implementation=args.attn_implementation,
        load_8bit=args.load_8bit, load_4bit=args.load_4bit,
    )
    if images and image_processor is None:
        raise UsageError(f"--model-path {args.model_path} has no vision tower; run it without --image-file.")
    if args.conv_mode:
        logger.info("Conversation template: %s (from --conv-mode)", args.conv_mode)
    conv_mode = args.conv_mode or default_conv_mode(model.config, tokenizer)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    return ChatSession(tokenizer, model, image_processor, images, conv_mode, context_len,
                       temperature=args.temperature, max_new_tokens=args.max_new_tokens, streamer=streamer)


def main(argv=None) -> int:
    """The chat; problems the user can fix raise `llava.errors.UserError` (run it through `run_main`)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_args(args)
    chat(start_session(args), debug=args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
