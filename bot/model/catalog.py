"""The model registry in SQL: a row per version with its status (candidate, active, retired), the data it
was trained on and its card. Disk (`models/<name>/<version>/`) holds the weights; this holds the history."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from bot.model.card import ModelCard
from bot.model.registry import list_versions
from bot.store import models as m


def register(sessions: sessionmaker[Session], card: ModelCard, path: Path) -> int:
    """The version's row, created as a candidate when first seen; its card is refreshed (evaluate adds)."""
    with sessions.begin() as session:
        row = session.scalar(
            select(m.ModelVersion).where(
                m.ModelVersion.name == card.name, m.ModelVersion.version == card.version
            )
        )
        if row is None:
            row = m.ModelVersion(
                name=card.name,
                version=card.version,
                path=str(path),
                status=m.ModelStatus.CANDIDATE.value,
                data_sha256=card.data_sha256,
                trained_from=datetime.fromisoformat(card.training_span["start"]),
                trained_to=datetime.fromisoformat(card.validation_span["end"]),
                card_json=card.to_json(),
            )
            session.add(row)
            session.flush()
        else:
            row.card_json, row.path = card.to_json(), str(path)
        return row.id


def activate(sessions: sessionmaker[Session], name: str, version: str) -> None:
    """Mark the version the daemon trades as active; the one it replaces becomes retired."""
    with sessions.begin() as session:
        session.execute(
            update(m.ModelVersion)
            .where(
                m.ModelVersion.name == name,
                m.ModelVersion.version != version,
                m.ModelVersion.status == m.ModelStatus.ACTIVE.value,
            )
            .values(status=m.ModelStatus.RETIRED.value)
        )
        session.execute(
            update(m.ModelVersion)
            .where(m.ModelVersion.name == name, m.ModelVersion.version == version)
            .values(status=m.ModelStatus.ACTIVE.value)
        )


def list_models(sessions: sessionmaker[Session] | None, model_dirs: list[Path]) -> list[dict[str, Any]]:
    """Every complete version on disk, with its SQL status where it has a row, oldest first per name."""
    rows: dict[tuple[str, str], m.ModelVersion] = {}
    if sessions is not None:
        with sessions() as session:
            rows = {(r.name, r.version): r for r in session.scalars(select(m.ModelVersion))}
    listing = []
    for model_dir in model_dirs:
        for version in list_versions(model_dir):
            card = ModelCard.read(model_dir / version)
            row = rows.get((card.name, card.version))
            evaluation = card.evaluation
            listing.append(
                {
                    "name": card.name,
                    "version": card.version,
                    "status": row.status if row else "unregistered",
                    "created_at": card.created_at,
                    "trained_from": card.training_span["start"],
                    "trained_to": card.validation_span["end"],
                    "data_sha256": card.data_sha256,
                    "features": len(card.features),
                    "window": card.window,
                    "validation_ic": card.metrics.get("validation_information_coefficient"),
                    "validation_directional_accuracy": card.metrics.get("validation_directional_accuracy"),
                    "walk_forward_sharpe": evaluation.get("model", {}).get("sharpe"),
                    "walk_forward_sharpe_ci": evaluation.get("sharpe_ci"),
                    "path": str(model_dir / version),
                }
            )
    return listing
