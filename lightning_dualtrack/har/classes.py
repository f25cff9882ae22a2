"""The HAR class names and the prompt templates that turn them into text for the zero-shot head."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["HAR_CLASSES", "PROMPT_TEMPLATES", "build_prompts", "class_to_action", "resolve_templates"]

#: The 15 classes of the public HAR dataset (Kaggle / ``Bingsu/Human_Action_Recognition``), in its label order.
HAR_CLASSES: tuple[str, ...] = (
    "calling",
    "clapping",
    "cycling",
    "dancing",
    "drinking",
    "eating",
    "fighting",
    "hugging",
    "laughing",
    "listening_to_music",
    "running",
    "sitting",
    "sleeping",
    "texting",
    "using_laptop",
)

#: Named template sets; ``{action}`` is replaced by the class name with underscores as spaces.
PROMPT_TEMPLATES: dict[str, tuple[str, ...]] = {
    # the reference project's single prompt
    "default": ("a photo of a person {action}.",),
    # a small ensemble: the classifier row is the renormalised mean of the normalised embeddings
    "ensemble": (
        "a photo of a person {action}.",
        "a photo of someone {action}.",
        "an image of a person {action}.",
        "a cropped photo of a person {action}.",
        "a person is {action}.",
    ),
}


def class_to_action(class_name: str) -> str:
    """``"listening_to_music"`` -> ``"listening to music"``."""
    return class_name.replace("_", " ").strip()


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """Turn a template set name (``"default"``, ``"ensemble"``), one template or a list of templates into a tuple.

    Example:
        >>> resolve_templates("default")
        ('a photo of a person {action}.',)
        >>> resolve_templates("a {action} photo.")
        ('a {action} photo.',)
    """
    if isinstance(templates, str):
        if templates in PROMPT_TEMPLATES:
            return PROMPT_TEMPLATES[templates]
        if "{action}" not in templates:
            raise ValueError(
                f"Expected argument `prompt_templates` to be one of {sorted(PROMPT_TEMPLATES)}, a template containing"
                f" '{{action}}', or a list of such templates, but got {templates!r}"
            )
        templates = [templates]
    templates = tuple(templates)
    if not templates:
        raise ValueError("Expected argument `prompt_templates` to hold at least one template, but got an empty list")
    bad = [t for t in templates if not isinstance(t, str) or "{action}" not in t]
    if bad:
        raise ValueError(f"Expected every prompt template to contain '{{action}}', but these do not: {bad}")
    return templates


def build_prompts(class_names: Sequence[str], templates: str | Sequence[str] = "default") -> list[str]:
    """All prompts, class-major: ``[c0t0, c0t1, ..., c1t0, ...]``.

    Example:
        >>> build_prompts(["listening_to_music"])
        ['a photo of a person listening to music.']
    """
    resolved = resolve_templates(templates)
    return [t.format(action=class_to_action(c)) for c in class_names for t in resolved]
