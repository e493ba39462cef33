"""The reviewer's decisions and their vocabulary: ``ReviewState`` (review.json's content: per tumor, each decision
with the lesion's id and a seed voxel; its schema is ``schema/review.schema.json``, read and written only through
``run.Run``), the status words every output uses ("to review", "kept", "removed", "kept, below threshold") and
where a lesion came from ("model", "added: ...").

Pure data plus numpy look-ups of seed voxels: no file access, and no import of ``review`` (candidates and edits)
or ``run`` (the folder), which both build on this module.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import InputError

REVIEW_FILE = "review.json"
# The one status vocabulary of every output and file (review rows, review --json, report.csv/.html/.json).
TO_REVIEW, KEPT, REMOVED, KEPT_BELOW = "to review", "kept", "removed", "kept, below threshold"
STATUSES = (TO_REVIEW, KEPT, REMOVED)  # what a reviewer decides; KEPT_BELOW is KEPT for a lesion a threshold dropped
ROW_STATUSES = (TO_REVIEW, KEPT, REMOVED, KEPT_BELOW)
_OLD_STATUS = {"unreviewed": TO_REVIEW}  # review states and callers from before the one vocabulary


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


REVIEW_VERSION = 2  # 2: decisions carry the lesion id of the run's id map (lesions/<tumor>.nii.gz); 1 read too


@dataclass
class ReviewState:
    """What a reviewer decided per tumor structure: a list of decisions, each with the lesion's id and a seed
    voxel (latest wins). The file's schema: AtlasSegLib/schema/review.schema.json."""
    tumors: dict = field(default_factory=dict)
    reviewer: Optional[str] = None  # who reviewed (``--reviewer``; DICOM person name, e.g. "Doe^Jane")
    reviewed_at: Optional[str] = None  # ISO 8601 UTC of the last review action

    def to_json(self) -> str:
        doc = {"version": REVIEW_VERSION, "tumors": self.tumors}
        # Optional fields: a review without them (older files, a scene's) reads and writes as before.
        if self.reviewer:
            doc["reviewer"] = self.reviewer
        if self.reviewed_at:
            doc["reviewed_at"] = self.reviewed_at
        return json.dumps(doc, indent=1)

    def touch(self, reviewer: Optional[str] = None) -> None:
        """Record a review action now (``reviewed_at``) and, when given, who made it."""
        if reviewer is not None and str(reviewer).strip():
            self.reviewer = str(reviewer).strip()
        self.reviewed_at = _now()

    @classmethod
    def from_json(cls, text: Optional[str]) -> "ReviewState":
        if not text:
            return cls()
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"review state is not valid JSON ({exc}); delete it to start the review afresh") from None
        if not isinstance(doc, dict) or doc.get("version") not in (1, REVIEW_VERSION) \
                or not isinstance(doc.get("tumors"), dict):
            raise InputError(f"review state is not an AtlasSeg review (version 1 or {REVIEW_VERSION} with a 'tumors' "
                             f"object; this one says version {doc.get('version') if isinstance(doc, dict) else '?'}): "
                             "made by a newer AtlasSeg? Update AtlasSeg, or delete review.json to start the review afresh")
        for entry in doc["tumors"].values():
            if isinstance(entry, dict) and isinstance(entry.get("decisions"), list):
                # A decision to review again is no decision (version 1 could hold "unreviewed" ones).
                entry["decisions"] = [d for d in entry["decisions"] if isinstance(d, dict)
                                      and _OLD_STATUS.get(d.get("status"), d.get("status")) != TO_REVIEW]
        return cls(doc["tumors"], reviewer=doc.get("reviewer") or None, reviewed_at=doc.get("reviewed_at") or None)

    def decisions(self, tumor: str) -> list:
        return self.tumors.get(tumor, {}).get("decisions", [])

    def set_threshold(self, tumor: str, threshold: float) -> None:
        self.tumors.setdefault(tumor, {"threshold": None, "decisions": []})["threshold"] = float(threshold)

    def decide(self, tumor: str, candidate, status: str, *, key: Optional[int] = None, origin: Optional[str] = None,
               threshold: Optional[float] = None) -> None:
        """Record ``status`` ("kept", "removed" or "to review" to forget earlier decisions) for a candidate
        (a ``Candidate`` or its ``as_dict()``); ``key``: its lesion id (default: the row's "id" when it has
        one), which the decision follows across thresholds. ``origin`` ("added: probability" / "added: image";
        absent = "model") and ``threshold`` (the lesion's own probability threshold) are kept from the lesion's
        earlier decision unless given: a later keep or remove does not forget that a person added or resized it."""
        status = _OLD_STATUS.get(status, status)
        if status not in STATUSES:
            raise InputError(f"review status must be one of {', '.join(STATUSES)}, not {status!r}")
        comp = candidate.as_dict() if hasattr(candidate, "as_dict") else dict(candidate)
        entry = self.tumors.setdefault(tumor, {"threshold": None, "decisions": []})
        seed = [int(v) for v in comp["seed_ijk"]]
        if key is None and isinstance(candidate, dict) and candidate.get("id") is not None:
            key = int(candidate["id"])
        earlier = [d for d in entry["decisions"]
                   if d["seed_ijk"] == seed or (key is not None and d.get("id") == int(key))]
        for d in earlier:
            origin = origin if origin is not None else d.get("origin")
            threshold = threshold if threshold is not None else d.get("threshold")
        # Latest decision wins; dropping earlier ones for the same lesion keeps the list short.
        entry["decisions"] = [d for d in entry["decisions"]
                              if d["seed_ijk"] != seed and (key is None or d.get("id") != int(key))]
        if status != TO_REVIEW:
            for k in ("status", "status_text", "present", "below_threshold", "flags"):
                comp.pop(k, None)
            decision = {"seed_ijk": seed, "status": status, "component": comp, "at": _now()}
            if key is not None:
                decision["id"] = int(key)
                comp["id"] = int(key)
            if origin and origin != ORIGIN_MODEL:
                decision["origin"] = str(origin)
            if threshold is not None:
                decision["threshold"] = round(float(threshold), 4)
            entry["decisions"].append(decision)

    def decided_ids(self, tumor: str, idmap=None, *, labels_box=None, ids: Optional[dict] = None,
                    unresolved: Optional[list] = None) -> dict:
        """``{id: decision}`` (latest wins): a decision's own id, else the id ``idmap`` remembers at its seed,
        else (``labels_box`` + ``ids``, a decision made without ids, e.g. in a Slicer scene) the id of the
        component holding its seed now. Decisions left without an id are appended to ``unresolved``."""
        out = {}
        for d in self.decisions(tumor):
            rid = d.get("id")
            if rid is None and idmap is not None:
                rid = idmap.id_at(d["seed_ijk"])
            if rid is None and labels_box is not None and ids and idmap is not None:
                kji = seed_kji(d["seed_ijk"], idmap.start_ijk, labels_box.shape)
                rid = ids.get(int(labels_box[kji])) if kji is not None else None
            if rid is not None:
                out.pop(int(rid), None)  # keeps the latest last
                out[int(rid)] = d
            elif unresolved is not None:
                unresolved.append(d)
        return out

    def forget_inside(self, tumor: str, labels_box: np.ndarray, start_ijk, label: int) -> None:
        """Drop the decisions whose seed lies in component ``label``: before a new decision on that component,
        so an earlier one (its seed elsewhere in the same lesion) cannot outlive it once the lesion is gone."""
        entry = self.tumors.get(tumor)
        if entry:
            drop = [d for d, value in self.under_seeds(tumor, labels_box, start_ijk) if value == label]
            entry["decisions"] = [d for d in entry["decisions"] if not any(d is x for x in drop)]

    def stable_ids(self, tumor: str, labels_box: np.ndarray, start_ijk, candidates: list, *,
                   register: bool = False) -> dict:
        """``{label: id}`` by seed voxels, for a review without a run folder's id map (the Slicer scene): each id,
        once given, is kept with a seed voxel; a candidate holding that seed keeps the id. A run folder's ids
        come from its id map instead (``lesions.IdMap``, matched by overlap; ``review_rows``)."""
        entry = self.tumors.get(tumor) or {}
        registry = entry.get("ids") or []
        ids = {}
        for known in sorted(registry, key=lambda r: r["id"]):
            kji = seed_kji(known["seed_ijk"], start_ijk, labels_box.shape)
            value = int(labels_box[kji]) if kji is not None else 0
            if value and value not in ids:
                ids[value] = int(known["id"])
        given = [int(d["id"]) for d in self.decisions(tumor) if d.get("id") is not None]
        nxt = max([int(r["id"]) for r in registry] + given, default=0) + 1
        new = []
        for cand in candidates:
            if cand.label not in ids:
                ids[cand.label] = nxt
                new.append({"id": nxt, "seed_ijk": [int(v) for v in cand.seed_ijk]})
                nxt += 1
        if register and new:
            self.tumors.setdefault(tumor, {"threshold": None, "decisions": []}).setdefault("ids", []).extend(new)
        return ids

    def id_of_seed(self, tumor: str, seed_ijk) -> Optional[int]:
        """The stable id remembered for a seed voxel, if any."""
        seed = [int(v) for v in seed_ijk]
        return next((int(r["id"]) for r in (self.tumors.get(tumor) or {}).get("ids") or () if r["seed_ijk"] == seed),
                    None)

    def under_seeds(self, tumor: str, array_box: np.ndarray, start_ijk) -> list:
        """``(decision, value of array_box at its seed voxel)`` for every decision, in order; the value is 0 when
        the seed lies outside the box (``array_box``: a label or mask array whose corner is ``start_ijk``)."""
        out = []
        for d in self.decisions(tumor):
            kji = seed_kji(d["seed_ijk"], start_ijk, array_box.shape)
            out.append((d, int(array_box[kji]) if kji is not None else 0))
        return out

    def status_of(self, tumor: str, labels_box: np.ndarray, start_ijk, label: int) -> str:
        """The status of component ``label`` (its value in ``labels_box``, a label array whose corner is
        ``start_ijk``) by seed voxels: the latest decision whose seed voxel lies inside it, else "to review"."""
        status = TO_REVIEW
        for d, value in self.under_seeds(tumor, labels_box, start_ijk):
            if value == label:
                status = d["status"]
        return status

    def removed_labels(self, tumor: str, labels_box: np.ndarray, start_ijk) -> set:
        """The labels of ``labels_box`` that hold the seed of a "removed" decision: false positives a reviewer
        threw away, which a new threshold must not bring back."""
        return {value for d, value in self.under_seeds(tumor, labels_box, start_ijk)
                if value and d["status"] == REMOVED}

    def rows(self, tumor: str, labels_box: np.ndarray, start_ijk, candidates: list, *, ids: Optional[dict] = None,
             absent_kept: bool = False, idmap=None) -> list:
        """Review rows: every current candidate with its status, then each removed component no longer in
        the mask (from its decision). ``ids``: ``{label: id}`` (``IdMap.assign``, or ``stable_ids`` without an
        id map; default: the size ranks of the components present now). With ``idmap`` statuses follow the
        lesion ids, else the seed voxels. ``absent_kept``: also list each kept component that is no longer in
        the mask (a higher threshold dropped it) as "kept, below threshold": a kept lesion is never silently
        lost from the list."""
        rows = []
        unresolved = []
        by_id = self.decided_ids(tumor, idmap, labels_box=labels_box, ids=ids, unresolved=unresolved) \
            if idmap is not None else None
        shown = set()
        for cand in candidates:
            row = cand.as_dict()
            if ids is not None:
                row["id"] = ids[cand.label]
            d = None
            if by_id is not None:
                d = by_id.get(row["id"])
                row["status"] = d["status"] if d else TO_REVIEW
            else:
                row["status"] = self.status_of(tumor, labels_box, start_ijk, cand.label)
            row["origin"] = origin_of(d)
            if d is not None and d.get("threshold") is not None:
                row["lesion_threshold"] = d["threshold"]
            row["present"] = True
            shown.add(row["id"])
            rows.append(row)
        if by_id is not None:
            absent = [(d, rid) for rid, d in sorted(by_id.items()) if rid not in shown] + \
                     [(d, None) for d in unresolved]
        else:
            absent = [(d, (d.get("id") if d.get("id") is not None else self.id_of_seed(tumor, d["seed_ijk"]))
                       if ids is not None else None)
                      for d, value in self.under_seeds(tumor, labels_box, start_ijk) if not value]
        for d, rid in absent:
            if d["status"] == REMOVED or (absent_kept and d["status"] == KEPT):
                row = dict(d["component"])
                row["status"] = d["status"]
                row["origin"] = origin_of(d)
                row["present"] = False
                if d["status"] == KEPT:
                    row["below_threshold"] = True
                    row["status"] = KEPT_BELOW
                # Without ids no number: ranks number the components present now, and the one it had at
                # decision time may belong to another candidate by now.
                row["id"] = rid
                rows.append(row)
        return rows


ORIGIN_MODEL = "model"  # a lesion the model found; added ones say "added: probability" / "added: image"


def origin_of(decision: Optional[dict]) -> str:
    """Where a lesion came from, by its decision: "model" (no decision, or none that says otherwise)."""
    return str((decision or {}).get("origin") or ORIGIN_MODEL)


def added_ids(state: "ReviewState", tumor: str) -> dict:
    """``{id: decision}`` of the lesions a person added (origin "added: ..."), latest decision each."""
    out = {}
    for d in state.decisions(tumor):
        if d.get("id") is not None and str(d.get("origin") or "").startswith("added"):
            out[int(d["id"])] = d
    return out


def seed_kji(seed_ijk, start_ijk, shape) -> Optional[tuple]:
    """A full-grid (i, j, k) seed as a (k, j, i) index into a box at ``start_ijk`` of ``shape``; None outside."""
    kji = (np.asarray(seed_ijk) - np.asarray(start_ijk))[::-1]
    return tuple(int(v) for v in kji) if np.all(kji >= 0) and np.all(kji < shape) else None


def status_text(row: dict) -> str:
    """A row's review status in words, the same in the CLI, the report and every file: "to review", "kept",
    "removed", "kept, below threshold"."""
    status = _OLD_STATUS.get(row.get("status"), row.get("status")) or TO_REVIEW
    if status == KEPT and row.get("below_threshold"):
        return KEPT_BELOW
    return status
