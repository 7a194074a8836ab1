"""Bringing SM's staging labels in line with the stages PostgreSQL records.

PostgreSQL's stages are the truth once no write of the secret is in doubt; SM's labels follow
(``kmsd.domain.rotation.next_label_op``: AWSCURRENT is only ever moved, one call at a time,
describing the secret again after each call because SM moves AWSPREVIOUS by itself). Used after
every rotation transition, after the reconciler resolves a write, and by its periodic sweep.
Callers hold the secret's lock.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from kmsd.aws.sm import SecretsWriter
from kmsd.domain.rotation import desired_labels, next_label_op

log = structlog.get_logger(__name__)

# More steps than any real plan needs (at most one per managed label and a stray holder each).
MAX_LABEL_STEPS = 8


async def converge(sm: SecretsWriter, sm_arn: str, stages: Mapping[str, str]) -> int | None:
    """Move SM's labels to ``stages`` (version id -> stage); return the calls made.

    None when they did not converge within MAX_LABEL_STEPS. Raises KmsError when SM fails.
    """
    desired = desired_labels(stages)
    for step in range(MAX_LABEL_STEPS):
        op = next_label_op(await sm.labels(sm_arn), desired)
        if op is None:
            return step
        await sm.move_label(sm_arn, op.label, to=op.move_to, away_from=op.remove_from)
    log.error("labels_not_converging", sm_arn=sm_arn)
    return None
