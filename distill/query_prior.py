"""C. Query-prior assignment distillation: the teacher's queries enter the student's decoder
as an extra query group, supervised with the teacher's own Hungarian assignment.

Teacher queries are translated into the student's query form:
- content [B,Q,Dt] -> [B,Q,Ds] through a learned linear adapter when the widths differ;
- positional embedding -> positional embedding: a learned linear adapter when widths differ;
- anchors -> anchors: as they are;
- positional embedding -> anchors (e.g. DETR teacher, DAB student): the teacher's first-stage
  predicted boxes serve as the anchors;
- anchors -> positional embedding (e.g. DAB teacher, DETR student): a learned linear map of the
  anchors' sine embedding.
The adapters train with the student and are dropped at export; the group only exists in training.
"""

from __future__ import annotations

import torch
from torch import nn

from detr_models.output import DetrOutput, QueryGroup
from detr_models.position import sine_encode

GROUP_NAME = "query_prior"


class QueryTranslator(nn.Module):
    """Turns a teacher's initial queries into a student query group."""

    def __init__(
        self, teacher_dim: int, teacher_kind: str, student_dim: int, student_kind: str
    ) -> None:
        super().__init__()
        self.student_dim = student_dim
        self.teacher_kind = teacher_kind
        self.student_kind = student_kind
        self.content = (
            nn.Identity() if teacher_dim == student_dim else nn.Linear(teacher_dim, student_dim)
        )
        if student_kind == "anchor":
            self.position = None  # anchors are used as they are
        elif teacher_kind == "anchor":
            self.position = nn.Linear(2 * student_dim, student_dim)  # sine of 4 coords -> D
        else:
            self.position = (
                nn.Identity() if teacher_dim == student_dim else nn.Linear(teacher_dim, student_dim)
            )

    def forward(self, teacher_out: DetrOutput) -> QueryGroup:
        content = self.content(teacher_out.init_content.detach())
        position = teacher_out.init_position.detach()
        if self.student_kind == "anchor" and self.teacher_kind != "anchor":
            position = teacher_out.boxes[0].detach()  # the teacher's first-stage boxes as anchors
        elif self.student_kind != "anchor" and self.teacher_kind == "anchor":
            position = self.position(sine_encode(position, self.student_dim // 2))
        elif self.position is not None:
            position = self.position(position)
        return QueryGroup(GROUP_NAME, content, position)


def teacher_assignments(
    teacher_out: DetrOutput, targets: list[dict], matcher: nn.Module
) -> list[list]:
    """The teacher's own Hungarian match of every stage's predictions to the ground truth."""
    with torch.no_grad():
        return [
            matcher(teacher_out.logits[k], teacher_out.boxes[k], targets)
            for k in range(teacher_out.num_stages)
        ]
