"""What a long poll tells kmsd about this instance, and when the digest is enough (pure).

Every poll reports what the instance holds: the current version of each secret (``held``),
every version it can serve (``versions``) and what each application process last read
(``processes``). Those *reports* grow with the application - about 150 bytes a secret, plus
the reads of each process - and an idle agent re-polls every hold. So once kmsd has taken a
report (a poll carrying it was answered), later polls send only ``reports_digest``, its
sha256, until the report changes. kmsd answers a digest it does not hold (another replica's
buffer not flushed yet, an operator forgot the instance, a kmsd that predates digests) at
once, and the next poll carries the report in full again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kmsd.domain.watch import REPORT_FIELDS, reports_digest

# The most recently seen processes only, few enough to keep the report small.
MAX_REPORTED_PROCESSES = 256
# And at most this many (process, secret) reads in all: a process that reads every secret of
# a big application (GET /v1/secrets) adds one read per secret. 50,000 reads are ~3 MiB of
# JSON, which keeps a full report within kmsd's watch body limit (12 MiB) beside the
# ``held`` and ``versions`` of any effective set the agent can take (8 MiB of metadata).
MAX_REPORTED_READS = 50_000


def reported_processes(
    reads: Mapping[str, Mapping[str, str]],
    *,
    max_processes: int = MAX_REPORTED_PROCESSES,
    max_reads: int = MAX_REPORTED_READS,
) -> dict[str, dict[str, str]]:
    """The most recent processes of ``reads`` (oldest first, as kept) that fit both limits."""
    kept: list[tuple[str, dict[str, str]]] = []
    total = 0
    for pid, read in reversed(list(reads.items())):  # newest first
        if len(kept) == max_processes or total + len(read) > max_reads:
            break
        kept.append((pid, dict(read)))
        total += len(read)
    return dict(reversed(kept))


def watch_body(full: Mapping[str, Any], taken: str | None) -> tuple[dict[str, Any], str]:
    """The body to send and the digest of its reports: the digest alone if kmsd took them.

    ``full`` is the whole body, reports included; ``taken`` the digest of the last reports
    kmsd answered a poll for (None: none yet, or kmsd asked for them again).
    """
    digest = reports_digest(full)
    if digest != taken:
        return dict(full), digest
    body = {k: v for k, v in full.items() if k not in REPORT_FIELDS}
    body["reports_digest"] = digest
    return body, digest
