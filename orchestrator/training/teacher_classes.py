"""Which of a teacher's classes stand for each of the dataset's: by name (the teacher's model
file carries its class names), or by the spec's `teacher.class_map`."""

from __future__ import annotations

import re

from orchestrator.errors import UserInputError


def teacher_class_index(
    teacher_names: list[str] | None,
    teacher_count: int,
    dataset_names: list[str],
    class_map: dict[str, str] | None,
) -> list[int] | None:
    """For each dataset class, the teacher's class index; None when the teacher's classes are
    the dataset's as they are (same count, no map). Raises UserInputError naming both lists."""
    same_count = teacher_count == len(dataset_names)
    if class_map is None and same_count and (not teacher_names or _generic(teacher_names)):
        return None  # nothing to match by: the classes are taken as they are
    if not teacher_names:
        raise UserInputError(
            f"teacher: {teacher_count} classes against the dataset's {len(dataset_names)}, and "
            "its model file names none; use a teacher trained on these classes, or one "
            "imported with `detrdistill import` (which keeps its class names)"
        )
    unknown = sorted(set(class_map or {}) - set(dataset_names))
    if unknown:
        raise UserInputError(
            f"teacher.class_map: {unknown} are not dataset classes; dataset classes: {dataset_names}"
        )
    by_name = {name.lower(): i for i, name in enumerate(teacher_names)}
    index, missing = [], []
    for name in dataset_names:
        wanted = (class_map or {}).get(name, name)
        if wanted.lower() in by_name:
            index.append(by_name[wanted.lower()])
        else:
            missing.append(name if wanted == name else f"{name} -> {wanted}")
    if missing:
        raise UserInputError(
            f"teacher: no teacher class for dataset class(es) {missing}. Dataset classes: "
            f"{dataset_names}; teacher classes: {_short(teacher_names)}. Map them in "
            "teacher.class_map (dataset class: teacher class)"
        )
    return None if same_count and index == list(range(teacher_count)) else index


def teacher_class_match(
    teacher_names: list[str],
    dataset_names: list[str],
    class_map: dict[str, str] | None,
) -> list[int | None] | None:
    """For each dataset class, the teacher's class index, or None where the teacher has no
    counterpart (by name, case-insensitive, or through `class_map`). None for the whole list
    when the classes are the teacher's own. Raises UserInputError when nothing overlaps or the
    map names classes that do not exist."""
    class_map = class_map or {}
    if not class_map and len(teacher_names) == len(dataset_names) and _generic(teacher_names):
        return None  # unnamed classes (LABEL_0, ...): taken as they are
    unknown = sorted(set(class_map) - set(dataset_names))
    if unknown:
        raise UserInputError(
            f"teacher.classes: {unknown} are not dataset classes; dataset classes: {dataset_names}"
        )
    by_name = {name.lower(): i for i, name in enumerate(teacher_names)}
    not_teacher = sorted(v for v in class_map.values() if v.lower() not in by_name)
    if not_teacher:
        raise UserInputError(
            f"teacher.classes: {not_teacher} are not teacher classes; teacher classes: "
            f"{_short(teacher_names)}"
        )
    index = [by_name.get(class_map.get(name, name).lower()) for name in dataset_names]
    if all(i is None for i in index):
        raise UserInputError(
            f"teacher: none of the dataset classes {dataset_names} is a teacher class "
            f"({_short(teacher_names)}); map them in teacher.classes (dataset class: teacher class)"
        )
    return None if index == list(range(len(teacher_names))) else index


def _generic(names: list[str]) -> bool:
    """Names that say nothing (transformers' LABEL_0, ...; class_0, ...)."""
    return all(re.fullmatch(r"(label|class)_\d+", n.lower()) for n in names)


def _short(names: list[str], limit: int = 100) -> str:
    shown = [n for n in names if n.upper() != "N/A"][:limit]
    return str(shown) + (" ..." if len(names) > limit else "")
