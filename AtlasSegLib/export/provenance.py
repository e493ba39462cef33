"""Who made what, as the exports say it: from a run's review state (review.json, through ``review``) and its edit
history (report.json), the structures a person edited (SEMIAUTOMATIC in DICOM), the reviewer and when, the lesions
a reviewer added, an RTSTRUCT approval (``Provenance``), and the tumor candidates nobody has reviewed yet
(``unreviewed_candidates``, for the GTV warning). The one place the exports learn about review."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..review import TO_REVIEW, load_review, review_rows
from ..run import Run
from .runfolder import RunFolder

@dataclass(frozen=True)
class Provenance:
    """Who made each structure, as DICOM says it: ``edited`` structures (a person removed, added, resized or
    re-thresholded something) are SEMIAUTOMATIC, the others AUTOMATIC; ``approved``: an RTSTRUCT says APPROVED by
    ``reviewer`` at ``approved_at`` (else UNAPPROVED)."""
    edited: frozenset = frozenset()
    reviewer: Optional[str] = None
    reviewed_at: Optional[str] = None  # ISO 8601, from review.json
    approved: bool = False
    approved_at: Optional[_dt.datetime] = None
    added: tuple = ()  # ((structure, lesion id, origin), ...): lesions a reviewer added by a click

    def algorithm_type(self, name: str) -> str:
        return "SEMIAUTOMATIC" if name in self.edited else "AUTOMATIC"

    def description(self, name: str) -> Optional[str]:
        """A structure's words on what a person added to it (SEG Segment Description, RTSTRUCT ROI Description),
        e.g. "lesion #18 added by a reviewer (added: image)"; None when nothing was added."""
        added = [(rid, origin) for structure, rid, origin in self.added if structure == name]
        if not added:
            return None
        lesions = ", ".join(f"#{rid} ({origin})" for rid, origin in added)
        return f"lesion{'s' if len(added) > 1 else ''} {lesions} added by a reviewer"


def review_provenance(outdir, report: Optional[dict] = None) -> tuple:
    """``(edited structure names, reviewer, reviewed_at)`` of a run, from its review state (review.json, read by
    ``review.load_review``) and its edit history (report.json ``history``): the one place exports learn who
    touched what. Edited: a tumor with a removed candidate, an added lesion (``origin`` "added: ..."), a lesion's
    own threshold or a threshold a person set; any structure a review or threshold edit changed. Reviewer and
    time: the review state's ``reviewer`` / ``reviewed_at`` when it records them, else None."""
    outdir = Path(outdir)
    if report is None:
        folder = Run(outdir, check=False)  # the run folder's owner reads report.json
        report = folder.read_report() if folder.report_path.is_file() else {}
    state = load_review(outdir)
    edited = set()
    for tumor, entry in (state.tumors or {}).items():
        decisions = entry.get("decisions") or []
        if entry.get("threshold") is not None or entry.get("lesion_thresholds") or any(
                d.get("status") == "removed" or str(d.get("origin") or "").startswith("added")
                or d.get("threshold") is not None for d in decisions):
            edited.add(tumor)
    for h in report.get("history") or ():
        if h.get("action") == "review" and h.get("structure") and (h.get("changed_voxels") or h.get("removed")):
            edited.add(h["structure"])
        elif h.get("action") == "threshold":
            edited.update(h.get("values") or {})
    reviewer = getattr(state, "reviewer", None) or None
    reviewed_at = getattr(state, "reviewed_at", None) or None
    return frozenset(edited), reviewer, reviewed_at


def provenance_for(run: RunFolder, *, approve: bool = False, reviewer: Optional[str] = None) -> Provenance:
    """The ``Provenance`` of an export: ``review_provenance`` of the run, ``reviewer`` (``--reviewer``) over the
    review state's. ``approve`` needs a reviewer's name (InputError without one)."""
    edited, recorded, reviewed_at = review_provenance(run.path, run.report)
    name = (reviewer or "").strip() or recorded
    if approve and not name:
        raise InputError("--approve records who approved the structures: give --reviewer NAME (e.g. "
                         "--reviewer 'Doe^Jane'), or review the run with a reviewer recorded")
    return Provenance(edited=edited, reviewer=name, reviewed_at=reviewed_at, approved=bool(approve),
                      approved_at=_dt.datetime.now() if approve else None, added=added_lesions(run.path))


def added_lesions(outdir) -> tuple:
    """``((structure, lesion id, origin), ...)`` of the lesions a reviewer added (review.json decisions with an
    "added: ..." origin, not removed since), in id order per structure."""
    state = load_review(outdir)
    out = []
    for tumor, entry in sorted((state.tumors or {}).items()):
        latest = {}
        for d in entry.get("decisions") or ():
            if d.get("id") is not None:
                latest[int(d["id"])] = d
        out += [(tumor, rid, str(d["origin"])) for rid, d in sorted(latest.items())
                if str(d.get("origin") or "").startswith("added") and d.get("status") != "removed"]
    return tuple(out)


def unreviewed_candidates(outdir) -> dict:
    """Tumor structure -> ids of its candidates nobody has kept or removed (``atlasseg review``)."""
    out = {}
    for name, rows in review_rows(outdir).items():
        ids = [r.get("id") for r in rows if r.get("status") == TO_REVIEW]
        if ids:
            out[name] = ids
    return out
