"""The status block dataeff writes for annotators, where they look in Label Studio.

Two places, both rewritten on every status update:

- the project **description**, top (the project card in the project list shows its first lines):
  the status, then how to label, then :data:`STATUS_MARKER`; what people write below the marker is
  kept. A description made by an older dataeff (status below :data:`LEGACY_STATUS_MARKER`, people's
  text above it) is converted on the next update;
- the **labeling instructions** (``expert_instruction``, HTML, shown before labeling when the
  project's ``show_instruction`` is on): the same status, the button to use and a warning that a
  pre-selected answer is the model's guess; people's instructions below the marker are kept.

Which button: Label Studio Community 1.23 has three queue settings ("sampling") for the ordinary
"Label All Tasks" button: Sequential (by task ID), Uniform (random) and Uncertainty (lowest
prediction score of the project's model version first; ``projects/functions/next_task.py``). None
follows a task field or a Data Manager tab's order, so dataeff leaves the sampling as it is and the
instructions name "Label Tasks As Displayed" in the "dataeff priority" tab, the only queue that
follows ``dataeff_priority``.

Pure string work; :class:`integrations.label_studio.LabelStudioClient` reads and writes.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

STATUS_MARKER = "--- dataeff status above (updated automatically); write below this line ---"
"""Separates dataeff's block (above) from what people wrote (below), in both places."""
LEGACY_STATUS_MARKER = "--- dataeff status (updated automatically; write above this line) ---"
"""The marker an older dataeff wrote: people's text above it, the status below."""
STATUS_PREFIX = "Status: "
DONE_HEADLINE = "No more labels needed: dataeff has stopped asking for labels."
WHY_PREFIX = "Why: "
TAB_NAME = "dataeff priority"
HOW_TO = (
    f"How to label: open the '{TAB_NAME}' tab and click 'Label Tasks As Displayed' (dataeff's order; "
    "'Label All Tasks' ignores it)."
)
STOP_PREFIX = "stop"
"""A status text starting with this (any case) means no more labels are needed: every stop decision
of :func:`dataeff.policy.decide` begins with ``stop:``."""


@dataclass(frozen=True)
class StatusTexts:
    """What dataeff writes: the whole ``description`` and ``instructions`` (HTML)."""

    description: str
    instructions: str


def is_done(text: str, done: bool | None = None) -> bool:
    """``done`` when given, else whether ``text`` is a stop decision (starts with ``stop``)."""
    return done if done is not None else text.strip().lower().startswith(STOP_PREFIX)


def status_block(text: str, done: bool) -> str:
    """The description's dataeff block (without the marker) for the status ``text``."""
    text = text.strip()
    if done:
        return f"{DONE_HEADLINE}\n{WHY_PREFIX}{text}" if text else DONE_HEADLINE
    return f"{STATUS_PREFIX}{text}\n{HOW_TO}"


def parse_status_block(block: str) -> str:
    """The status text that :func:`status_block` was given (``''`` for an empty block)."""
    block = block.strip()
    if block.startswith(DONE_HEADLINE):
        rest = block[len(DONE_HEADLINE) :].strip()
        return rest[len(WHY_PREFIX) :].strip() if rest.startswith(WHY_PREFIX) else rest
    if block.startswith(STATUS_PREFIX):
        rest = block[len(STATUS_PREFIX) :]
        if rest.endswith(HOW_TO):
            rest = rest[: -len(HOW_TO)]
        return rest.strip()
    return block


def split_description(description: str) -> tuple[str, str]:
    """``(status text, people's text)`` of a project description (either marker, or none)."""
    description = description or ""
    if STATUS_MARKER in description:
        block, user = description.split(STATUS_MARKER, 1)
        return parse_status_block(block), user.strip()
    if LEGACY_STATUS_MARKER in description:
        user, status = description.split(LEGACY_STATUS_MARKER, 1)
        return status.strip(), user.strip()
    return "", description.strip()


def user_instructions(instructions: str) -> str:
    """People's part of the labeling instructions: below the marker, or all of them when none."""
    instructions = instructions or ""
    if STATUS_MARKER not in instructions:
        return instructions.strip()
    rest = instructions.split(STATUS_MARKER, 1)[1]
    if rest.startswith("</p>"):
        rest = rest[len("</p>") :]
    return rest.strip()


def instructions_html(text: str, done: bool) -> str:
    """The dataeff part of the labeling instructions (HTML Label Studio keeps through its cleaner)."""
    esc = html.escape(text.strip(), quote=False)
    if done:
        head = f"<p><b>{html.escape(DONE_HEADLINE, quote=False)}</b></p>"
        if esc:
            head += f"<p>{WHY_PREFIX}{esc}</p>"
        return f"<h3>dataeff</h3>{head}"
    return (
        "<h3>dataeff: what to label now</h3>"
        f"<p><b>{esc}</b></p>"
        f"<p>How to label: in the project's task list open the tab <b>{TAB_NAME}</b> and click "
        "<b>Label Tasks As Displayed</b>: the items come in the order dataeff needs, highest priority "
        "first. <b>Label All Tasks</b> does not follow that order (Label Studio Community can only "
        "queue by task ID, at random or by prediction score).</p>"
        "<p>A pre-selected answer is the model's guess, not a checked label: read the text and "
        "change it when it is wrong before you submit.</p>"
    )


def compose(text: str, description: str, instructions: str, done: bool | None = None) -> StatusTexts:
    """The new description and instructions for status ``text``, keeping what people wrote."""
    finished = is_done(text, done)
    _, user = split_description(description)
    new_description = f"{status_block(text, finished)}\n{STATUS_MARKER}"
    if user:
        new_description += f"\n{user}"
    new_instructions = f"{instructions_html(text, finished)}<p>{STATUS_MARKER}</p>"
    kept = user_instructions(instructions)
    if kept:
        new_instructions += kept
    return StatusTexts(description=new_description, instructions=new_instructions)


__all__ = [
    "LEGACY_STATUS_MARKER",
    "STATUS_MARKER",
    "StatusTexts",
    "compose",
    "is_done",
    "parse_status_block",
    "split_description",
    "status_block",
    "user_instructions",
]
