"""Chat messages -> one prompt string: a Hugging Face checkpoint's chat template, or the plain one.

A converted checkpoint keeps its tokenizer_config.json's `chat_template` (a Jinja template) with the
bos/eos token strings it refers to (moe/training/hf_mixtral.py). It is rendered as transformers'
apply_chat_template renders it: a sandboxed Jinja environment with trim_blocks and lstrip_blocks,
`messages`, `add_generation_prompt`, `bos_token`, `eos_token` and `raise_exception`. The text it
gives already holds the special tokens, so it is encoded without adding them again.

A tokenizer without a template (ours) gets the plain one: each message as "role: content" on its own
line, then "assistant:" for the model to continue.
"""

from __future__ import annotations

import functools


def plain(messages: list[dict]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render(chat_template: dict | None, messages: list[dict]) -> str:
    """messages ([{role, content}], content a string) as the prompt text, ready for generation. A
    template that refuses the messages (raise_exception) is a ValueError with its message."""
    if chat_template is None:
        return plain(messages)
    from jinja2.exceptions import TemplateError

    try:
        return _compiled(chat_template["template"]).render(
            messages=messages,
            add_generation_prompt=True,
            bos_token=chat_template.get("bos_token") or "",
            eos_token=chat_template.get("eos_token") or "",
        )
    except TemplateError as e:
        raise ValueError(f"the checkpoint's chat template refused these messages: {e}") from None


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
