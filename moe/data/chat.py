"""Chat messages -> one prompt string: a Hugging Face checkpoint's chat template, or the plain one.

A converted checkpoint keeps its tokenizer_config.json's `chat_template` (a Jinja template) with the
bos/eos token strings it refers to (moe/training/hf_convert.py). It is rendered as transformers'
apply_chat_template renders it: a sandboxed Jinja environment with trim_blocks and lstrip_blocks,
`messages`, `add_generation_prompt`, `bos_token`, `eos_token` and `raise_exception`. The text it
gives already holds the special tokens, so it is encoded without adding them again.

A tokenizer without a template (ours) gets the plain one: each message as "role: content" on its own
line, then "assistant:" for the model to continue.

Training on a conversation (`prepare --format chat`, moe/data/instruct.py) needs to know which text
the assistant wrote: `pieces` renders the conversation prefix by prefix, as a generation would see
it. Before assistant turn i the text is render(messages[:i]) with the generation prompt; after it,
render(messages[:i + 1]) without; what lies between is what the model must learn to write (the
content and the template's end of turn: Mixtral's </s>, ChatML's <|im_end|>, the plain template's
newline). A template that does not render prefix by prefix (one that rewrites earlier turns) is
refused: its assistant tokens cannot be told apart.
"""

from __future__ import annotations

import functools

ROLES = ("system", "developer", "user", "assistant")  # the roles a message may have


def plain(messages: list[dict], add_generation_prompt: bool = True) -> str:
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + ("assistant:" if add_generation_prompt else "")


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render(chat_template: dict | None, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """messages ([{role, content}], content a string) as the prompt text, ready for generation
    (add_generation_prompt=False: as a finished conversation). A template that refuses the messages
    (raise_exception) is a ValueError with its message."""
    if chat_template is None:
        return plain(messages, add_generation_prompt)
    from jinja2.exceptions import TemplateError

    try:
        return _compiled(chat_template["template"]).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=chat_template.get("bos_token") or "",
            eos_token=chat_template.get("eos_token") or "",
        )
    except TemplateError as e:
        raise ValueError(f"the checkpoint's chat template refused these messages: {e}") from None


def pieces(chat_template: dict | None, messages: list[dict]) -> list[tuple[str, bool]]:
    """The conversation up to its last assistant turn as (text, written by the assistant) pieces
    whose texts join into render(..., add_generation_prompt=False); see the module doc. A ValueError
    when there is no assistant turn or the template does not render prefix by prefix."""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise ValueError("a training conversation needs at least one assistant message")
    out, done = [], ""
    for i in turns:
        before = render(chat_template, messages[:i], add_generation_prompt=True)
        after = render(chat_template, messages[: i + 1], add_generation_prompt=False)
        if not (before.startswith(done) and after.startswith(before)):
            raise ValueError(
                f"the chat template does not render this conversation prefix by prefix (at message {i}), "
                "so the assistant's tokens cannot be told apart"
            )
        out += [(before[len(done) :], False), (after[len(before) :], True)]
        done = after
    return [(text, trained) for text, trained in out if text]


def from_tokenizer_config(config: dict) -> dict | None:
    """The chat template and its special tokens from a tokenizer_config.json, or None without one."""
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not isinstance(template, str):
        return None

    def token(name):
        v = config.get(name)
        return v.get("content") if isinstance(v, dict) else v if isinstance(v, str) else None

    return {"template": template, "bos_token": token("bos_token"), "eos_token": token("eos_token")}
